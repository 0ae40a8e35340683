// gemm_tc.cu -- the dense layer's matrix products on tensor cores (precision tf32 or bf16): the
// same three products, arguments and launch grid as gemm.cu's sgemm_nn / sgemm_nt / sgemm_tn
//
//   gemm_tc_nn: C = alpha A   B   (+ bias) + beta C      A: M x K, B: K x N   (dx = dy W)
//   gemm_tc_nt: C = alpha A   B^T (+ bias) + beta C      A: M x K, B: N x K   (y = x W^T + b)
//   gemm_tc_tn: C = alpha A^T B   (+ bias) + beta C      A: K x M, B: K x N   (dW = dy^T x)
//
// with both operands rounded to TF32 (TC_BF16 0) or BF16 (TC_BF16 1) and FP32 accumulation
// (reference/gemm.py with precision=...). The block tile, pipeline and fragments are
// tc_tile.cuh's; this file only says where each element of op(A) and op(B) is in memory.
// Each operand is copied with consecutive threads along its contiguous axis (k for A and for
// B^T, m for A^T, n for B), so the global reads of a warp are coalesced for every transpose;
// along k in 16-byte copies when K is a multiple of 4 and the operand's matrix is 16-byte
// aligned, else one float at a time (tc_tile.cuh's TcKMajor16, TcKMajor, TcRowMajor).
//
// Storage: each product is a template over the storage types of A, B and C. The _bf16 entry
// points are the dense layer's products on BF16 activations (precision bf16:
// cupycnn/ops/_storage.py), as conv2d_tc.cu's are the convolution's: the activations BF16, the
// weight and its gradient float32 --
//   gemm_tc_nn_bf16, gemm_tc_nt_bf16: A and C BF16, B float32   (dx = dy W, y = x W^T + b)
//   gemm_tc_tn_bf16:                  A and B BF16, C float32   (dW = dy^T x)
// A BF16 operand reaches the stage through registers (tc_tile.cuh, TcCopies), one element per
// copy in the float operand's thread pattern; the products and the FP32 accumulation are the
// float ones, the bias and beta C are added in FP32 and a BF16 C is rounded once when stored
// (and decoded when beta reads it): the result is the float32 kernel's on the decoded inputs,
// rounded.
// Grid: (ceil(N / TC_BN), ceil(M / TC_BM), batch); block: TC_THREADS.
#include "common.cuh"
#include "tc_tile.cuh"

// One operand's copies into a stage: the ROWS x TC_BK tile at (row0, k0) of a rows x K matrix X,
// stored [k][row] (ROW_MAJOR) or [row][k]. float: cp.async (16 bytes at a time along k where
// `vectors`); bf16: through registers (TcCopies), completed by flush().
template <int ROWS, bool ROW_MAJOR, class T>
struct GemmOperand {
  static constexpr int LOADS = ROW_MAJOR ? TcRowMajor<ROWS>::LOADS : TcKMajor<ROWS>::LOADS;
  TcCopies<T, LOADS> copies;

  __device__ __forceinline__ void load(TcStage& s, float* tile, const T* X, int rows, int K,
                                       int row0, int k0, bool) {
    if (ROW_MAJOR) {
      const int r = TcRowMajor<ROWS>::row(), g = row0 + r;
#pragma unroll
      for (int i = 0; i < LOADS; ++i) {
        const int k = TcRowMajor<ROWS>::k(i);
        const bool ok = g < rows && k0 + k < K;
        copies.copy(i, s, tile, r, k, ok ? X + (long long)(k0 + k) * rows + g : X, ok);
      }
    } else {
      const int k = TcKMajor<ROWS>::k();
#pragma unroll
      for (int i = 0; i < LOADS; ++i) {
        const int r = TcKMajor<ROWS>::row(i), g = row0 + r;
        const bool ok = g < rows && k0 + k < K;
        copies.copy(i, s, tile, r, k, ok ? X + (long long)g * K + k0 + k : X, ok);
      }
    }
  }
  __device__ __forceinline__ void flush(TcStage& s) { copies.flush(s); }
};

template <int ROWS, bool ROW_MAJOR>
struct GemmOperand<ROWS, ROW_MAJOR, float> {
  __device__ __forceinline__ void load(TcStage&, float* tile, const float* X, int rows, int K,
                                       int row0, int k0, bool vectors) {
    if (ROW_MAJOR) tc_load_row_major<ROWS>(tile, X, rows, K, row0, k0);
    else           tc_load_k_major<ROWS>(tile, X, rows, K, row0, k0, vectors);
  }
  __device__ __forceinline__ void flush(TcStage&) {}          // every copy is a cp.async
};

template <bool TRANS_A, bool TRANS_B, class TA, class TB>
struct GemmLoader {
  const TA* A;
  const TB* B;
  int M, N, K, m0, n0;
  bool vectors_a, vectors_b;    // 16-byte copies along k (K % 4 == 0, the matrix 16-byte aligned)
  GemmOperand<TC_BM, TRANS_A, TA> a;
  GemmOperand<TC_BN, !TRANS_B, TB> b;

  __device__ __forceinline__ void load(int step, TcStage& s) {
    const int k0 = step * TC_BK;
    a.load(s, s.a, A, M, K, m0, k0, vectors_a);
    b.load(s, s.b, B, N, K, n0, k0, vectors_b);
  }
  __device__ __forceinline__ void flush(TcStage& s) {
    a.flush(s);
    b.flush(s);
  }
};

template <class TC>
struct GemmStore {
  TC* C;
  const float* bias;
  int M, N, m0, n0, bias_mode;
  float alpha, beta;

  __device__ __forceinline__ void operator()(int r, int c, float v) const {
    const int row = m0 + r, col = n0 + c;
    if (row >= M || col >= N) return;
    v *= alpha;
    if (bias_mode == 1) v += bias[row];
    else if (bias_mode == 2) v += bias[col];
    TC* out = C + (long long)row * N + col;
    if (beta != 0.0f) v += beta * to_float(*out);
    *out = from_float<TC>(v);
  }
};

template <bool TRANS_A, bool TRANS_B, class TA, class TB, class TC>
__device__ __forceinline__ void gemm_tc(TcStage* stages, const TA* A, const TB* B, TC* C,
                                        const float* bias, int M, int N, int K, float alpha,
                                        float beta, int bias_mode, long long stride_a,
                                        long long stride_b, long long stride_c) {
  A += blockIdx.z * stride_a;
  B += blockIdx.z * stride_b;
  C += blockIdx.z * stride_c;
  const int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
  GemmLoader<TRANS_A, TRANS_B, TA, TB> loader;
  loader.A = A; loader.B = B; loader.M = M; loader.N = N; loader.K = K; loader.m0 = m0;
  loader.n0 = n0;
  loader.vectors_a = K % 4 == 0 && ((size_t)A & 15) == 0;    // this block's matrices
  loader.vectors_b = K % 4 == 0 && ((size_t)B & 15) == 0;
  TcAcc acc;
  tc_mainloop(loader, stages, (K + TC_BK - 1) / TC_BK, acc);
  GemmStore<TC> store{C, bias, M, N, m0, n0, bias_mode, alpha, beta};
  tc_epilogue(acc, store);
}

// ------------------------------------------------------------- entry points: float, then bf16
// (written out: the emulator and the coverage table find kernels by their declarations)

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
gemm_tc_nn(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
           const float* __restrict__ bias, int M, int N, int K, float alpha, float beta,
           int bias_mode, long long stride_a, long long stride_b, long long stride_c) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];   // in the entry: poisoned by sim
  gemm_tc<false, false>(stages, A, B, C, bias, M, N, K, alpha, beta, bias_mode, stride_a, stride_b,
                        stride_c);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
gemm_tc_nt(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
           const float* __restrict__ bias, int M, int N, int K, float alpha, float beta,
           int bias_mode, long long stride_a, long long stride_b, long long stride_c) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];   // in the entry: poisoned by sim
  gemm_tc<false, true>(stages, A, B, C, bias, M, N, K, alpha, beta, bias_mode, stride_a, stride_b,
                       stride_c);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
gemm_tc_tn(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
           const float* __restrict__ bias, int M, int N, int K, float alpha, float beta,
           int bias_mode, long long stride_a, long long stride_b, long long stride_c) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];   // in the entry: poisoned by sim
  gemm_tc<true, false>(stages, A, B, C, bias, M, N, K, alpha, beta, bias_mode, stride_a, stride_b,
                       stride_c);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
gemm_tc_nn_bf16(const bf16* __restrict__ A, const float* __restrict__ B, bf16* __restrict__ C,
                const float* __restrict__ bias, int M, int N, int K, float alpha, float beta,
                int bias_mode, long long stride_a, long long stride_b, long long stride_c) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];   // in the entry: poisoned by sim
  gemm_tc<false, false>(stages, A, B, C, bias, M, N, K, alpha, beta, bias_mode, stride_a, stride_b,
                        stride_c);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
gemm_tc_nt_bf16(const bf16* __restrict__ A, const float* __restrict__ B, bf16* __restrict__ C,
                const float* __restrict__ bias, int M, int N, int K, float alpha, float beta,
                int bias_mode, long long stride_a, long long stride_b, long long stride_c) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];   // in the entry: poisoned by sim
  gemm_tc<false, true>(stages, A, B, C, bias, M, N, K, alpha, beta, bias_mode, stride_a, stride_b,
                       stride_c);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
gemm_tc_tn_bf16(const bf16* __restrict__ A, const bf16* __restrict__ B, float* __restrict__ C,
                const float* __restrict__ bias, int M, int N, int K, float alpha, float beta,
                int bias_mode, long long stride_a, long long stride_b, long long stride_c) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];   // in the entry: poisoned by sim
  gemm_tc<true, false>(stages, A, B, C, bias, M, N, K, alpha, beta, bias_mode, stride_a, stride_b,
                       stride_c);
}
