// gemm_tc.cu -- the dense layer's matrix products on tensor cores (precision tf32 or bf16): the
// same three products, arguments and launch grid as gemm.cu's sgemm_nn / sgemm_nt / sgemm_tn
//
//   gemm_tc_nn: C = alpha A   B   (+ bias) + beta C      A: M x K, B: K x N
//   gemm_tc_nt: C = alpha A   B^T (+ bias) + beta C      A: M x K, B: N x K
//   gemm_tc_tn: C = alpha A^T B   (+ bias) + beta C      A: K x M, B: K x N
//
// with both operands rounded to TF32 (TC_BF16 0) or BF16 (TC_BF16 1) and FP32 accumulation
// (reference/gemm.py with precision=...). The block tile, pipeline and fragments are
// tc_tile.cuh's; this file only says where each element of op(A) and op(B) is in memory.
// Each operand is copied with consecutive threads along its contiguous axis (k for A and for
// B^T, m for A^T, n for B), so the global reads of a warp are coalesced for every transpose;
// along k in 16-byte copies when K is a multiple of 4 and both of the block's matrices are
// 16-byte aligned, else one float at a time (tc_tile.cuh's TcKMajor16, TcKMajor, TcRowMajor).
// Grid: (ceil(N / TC_BN), ceil(M / TC_BM), batch); block: TC_THREADS.
#include "common.cuh"
#include "tc_tile.cuh"

template <bool TRANS_A, bool TRANS_B>
struct GemmLoader {
  const float* A;
  const float* B;
  int M, N, K, m0, n0;
  bool vectors;       // 16-byte copies along k (K % 4 == 0, operands 16-byte aligned)

  __device__ __forceinline__ void load(int step, TcStage& s) const {
    const int k0 = step * TC_BK;
    if (TRANS_A) tc_load_row_major<TC_BM>(s.a, A, M, K, m0, k0);
    else         tc_load_k_major<TC_BM>(s.a, A, M, K, m0, k0, vectors);
    if (TRANS_B) tc_load_k_major<TC_BN>(s.b, B, N, K, n0, k0, vectors);
    else         tc_load_row_major<TC_BN>(s.b, B, N, K, n0, k0);
  }
  __device__ __forceinline__ void flush(TcStage&) const {}    // every copy is a cp.async
};

struct GemmStore {
  float* C;
  const float* bias;
  int M, N, m0, n0, bias_mode;
  float alpha, beta;

  __device__ __forceinline__ void operator()(int r, int c, float v) const {
    const int row = m0 + r, col = n0 + c;
    if (row >= M || col >= N) return;
    v *= alpha;
    if (bias_mode == 1) v += bias[row];
    else if (bias_mode == 2) v += bias[col];
    float* out = C + (long long)row * N + col;
    if (beta != 0.0f) v += beta * *out;
    *out = v;
  }
};

template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void gemm_tc(TcStage* stages, const float* A, const float* B, float* C,
                                        const float* bias, int M, int N, int K, float alpha,
                                        float beta, int bias_mode, long long stride_a,
                                        long long stride_b, long long stride_c) {
  A += blockIdx.z * stride_a;
  B += blockIdx.z * stride_b;
  C += blockIdx.z * stride_c;
  const int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
  const bool vectors = K % 4 == 0 && (((size_t)A | (size_t)B) & 15) == 0;  // this block's
  GemmLoader<TRANS_A, TRANS_B> loader{A, B, M, N, K, m0, n0, vectors};
  TcAcc acc;
  tc_mainloop(loader, stages, (K + TC_BK - 1) / TC_BK, acc);
  GemmStore store{C, bias, M, N, m0, n0, bias_mode, alpha, beta};
  tc_epilogue(acc, store);
}

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
