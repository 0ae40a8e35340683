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
// B^T, m for A^T, n for B), so the global reads of a warp are coalesced for every transpose.
// Grid: (ceil(N / TC_BN), ceil(M / TC_BM), batch); block: TC_THREADS.
#include "common.cuh"
#include "tc_tile.cuh"

template <bool TRANS_A, bool TRANS_B>
struct GemmLoader {
  const float* A;
  const float* B;
  int M, N, K, m0, n0;

  __device__ __forceinline__ void load(int step, TcStage& s) const {
    const int k0 = step * TC_BK, tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < TC_A_LOADS; ++i) {
      int m, k;
      if (TRANS_A) { m = tid % TC_BM; k = tid / TC_BM + i * (TC_THREADS / TC_BM); }
      else         { k = tid % TC_BK; m = tid / TC_BK + i * (TC_THREADS / TC_BK); }
      const int gm = m0 + m, gk = k0 + k;
      const bool ok = gm < M && gk < K;
      const float* src = TRANS_A ? A + (long long)gk * M + gm : A + (long long)gm * K + gk;
      tc_copy(s.a + m * TC_LD, k, ok ? src : A, ok);
    }
#pragma unroll
    for (int i = 0; i < TC_B_LOADS; ++i) {
      int n, k;
      if (TRANS_B) { k = tid % TC_BK; n = tid / TC_BK + i * (TC_THREADS / TC_BK); }
      else         { n = tid % TC_BN; k = tid / TC_BN + i * (TC_THREADS / TC_BN); }
      const int gn = n0 + n, gk = k0 + k;
      const bool ok = gn < N && gk < K;
      const float* src = TRANS_B ? B + (long long)gn * K + gk : B + (long long)gk * N + gn;
      tc_copy(s.b + n * TC_LD, k, ok ? src : B, ok);
    }
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
  GemmLoader<TRANS_A, TRANS_B> loader{A, B, M, N, K, m0, n0};
  TcAcc acc;
  tc_mainloop(loader, stages, (K + TC_BK - 1) / TC_BK, acc);
  GemmStore store{C, bias, M, N, m0, n0, bias_mode, alpha, beta};
  tc_epilogue(acc, store);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS)
gemm_tc_nn(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
           const float* __restrict__ bias, int M, int N, int K, float alpha, float beta,
           int bias_mode, long long stride_a, long long stride_b, long long stride_c) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];   // in the entry: poisoned by sim
  gemm_tc<false, false>(stages, A, B, C, bias, M, N, K, alpha, beta, bias_mode, stride_a, stride_b,
                       stride_c);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS)
gemm_tc_nt(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
           const float* __restrict__ bias, int M, int N, int K, float alpha, float beta,
           int bias_mode, long long stride_a, long long stride_b, long long stride_c) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];   // in the entry: poisoned by sim
  gemm_tc<false, true>(stages, A, B, C, bias, M, N, K, alpha, beta, bias_mode, stride_a, stride_b,
                       stride_c);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS)
gemm_tc_tn(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
           const float* __restrict__ bias, int M, int N, int K, float alpha, float beta,
           int bias_mode, long long stride_a, long long stride_b, long long stride_c) {
  __shared__ __align__(16) TcStage stages[TC_STAGES];   // in the entry: poisoned by sim
  gemm_tc<true, false>(stages, A, B, C, bias, M, N, K, alpha, beta, bias_mode, stride_a, stride_b,
                       stride_c);
}
