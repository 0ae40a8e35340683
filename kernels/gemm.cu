// gemm.cu -- single-precision matrix products, the dense layer's forward and both halves of its
// backward.
//
//   sgemm_nn: C = alpha * A   @ B   (+ bias) + beta * C    A: M x K,  B: K x N   (dx = dy @ W)
//   sgemm_nt: C = alpha * A   @ B^T (+ bias) + beta * C    A: M x K,  B: N x K   (y = x @ W^T + b)
//   sgemm_tn: C = alpha * A^T @ B   (+ bias) + beta * C    A: K x M,  B: K x N   (dW = dy^T @ x)
//
// All matrices are row-major and contiguous; C is M x N. `bias` (may be NULL) is added in the
// epilogue, per row of C (bias_mode 1, bias[M]) or per column (bias_mode 2, bias[N]). When beta
// is 0, C is only written, never read. A batch of independent products runs along gridDim.z:
// product z uses A + z*stride_a, B + z*stride_b, C + z*stride_c (a stride of 0 shares a matrix).
//
// Parallelisation:
// - A block of 256 threads computes a TILE_M x TILE_N = 64 x 64 tile of C, walking K in steps of
//   TILE_K = 16.
// - At each step it stages a 64 x 16 slice of op(A) and a 16 x 64 slice of op(B) in shared memory:
//   4 elements of each per thread, read along whichever axis is contiguous in memory, so global
//   reads are coalesced for every transpose.
// - After a barrier each thread accumulates a 4 x 4 micro-tile of C in registers: 16 rank-1
//   updates, each 8 shared-memory reads for 16 fused multiply-adds.
// - Thread (tx, ty) owns rows ty + 16 i and columns tx + 16 j of the tile: a warp's shared reads
//   are broadcasts or distinct banks, and its writes of C are coalesced.
// - The tiles are stored k-major (As[k][m], Bs[k][n]) with one float of padding per row, which
//   keeps the transposed stores free of bank conflicts.
#include "common.cuh"

#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
#define GEMM_THREADS 256                       // 16 x 16 threads
#define MICRO 4                                // each thread: MICRO x MICRO outputs
#define GEMM_THREADS_X (TILE_N / MICRO)        // 16
#define LOADS_PER_THREAD (TILE_M * TILE_K / GEMM_THREADS)   // 4 elements of each slice

#define BIAS_NONE 0
#define BIAS_PER_ROW 1
#define BIAS_PER_COLUMN 2

template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_tile(const float* __restrict__ A, const float* __restrict__ B,
                                           float* __restrict__ C, const float* __restrict__ bias,
                                           int M, int N, int K, float alpha, float beta,
                                           int bias_mode, long long stride_a, long long stride_b,
                                           long long stride_c) {
  __shared__ float As[TILE_K][TILE_M + 1];
  __shared__ float Bs[TILE_K][TILE_N + 1];
  A += blockIdx.z * stride_a;
  B += blockIdx.z * stride_b;
  C += blockIdx.z * stride_c;
  const int tid = threadIdx.x;
  const int tx = tid % GEMM_THREADS_X, ty = tid / GEMM_THREADS_X;
  const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;

  float acc[MICRO][MICRO];
#pragma unroll
  for (int i = 0; i < MICRO; ++i)
#pragma unroll
    for (int j = 0; j < MICRO; ++j) acc[i][j] = 0.0f;

  for (int k0 = 0; k0 < K; k0 += TILE_K) {
#pragma unroll
    for (int r = 0; r < LOADS_PER_THREAD; ++r) {
      const int e = tid + r * GEMM_THREADS;
      // op(A)[m][k]: A is M x K (read along k) or, transposed, K x M (read along m).
      int m, k;
      if (TRANS_A) { m = e % TILE_M; k = e / TILE_M; }
      else         { k = e % TILE_K; m = e / TILE_K; }
      const int gm = m0 + m, gk = k0 + k;
      float a = 0.0f;
      if (gm < M && gk < K) a = TRANS_A ? A[(long long)gk * M + gm] : A[(long long)gm * K + gk];
      As[k][m] = a;
      // op(B)[k][n]: B is K x N (read along n) or, transposed, N x K (read along k).
      int n;
      if (TRANS_B) { k = e % TILE_K; n = e / TILE_K; }
      else         { n = e % TILE_N; k = e / TILE_N; }
      const int gn = n0 + n, gk2 = k0 + k;
      float b = 0.0f;
      if (gn < N && gk2 < K) b = TRANS_B ? B[(long long)gn * K + gk2] : B[(long long)gk2 * N + gn];
      Bs[k][n] = b;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < TILE_K; ++k) {
      float a[MICRO], b[MICRO];
#pragma unroll
      for (int i = 0; i < MICRO; ++i) a[i] = As[k][ty + i * (TILE_M / MICRO)];
#pragma unroll
      for (int j = 0; j < MICRO; ++j) b[j] = Bs[k][tx + j * GEMM_THREADS_X];
#pragma unroll
      for (int i = 0; i < MICRO; ++i)
#pragma unroll
        for (int j = 0; j < MICRO; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();   // the next step overwrites the tiles
  }

#pragma unroll
  for (int i = 0; i < MICRO; ++i) {
    const int row = m0 + ty + i * (TILE_M / MICRO);
    if (row >= M) continue;
#pragma unroll
    for (int j = 0; j < MICRO; ++j) {
      const int col = n0 + tx + j * GEMM_THREADS_X;
      if (col >= N) continue;
      float v = alpha * acc[i][j];
      if (bias_mode == BIAS_PER_ROW) v += bias[row];
      else if (bias_mode == BIAS_PER_COLUMN) v += bias[col];
      float* c = &C[(long long)row * N + col];
      if (beta != 0.0f) v += beta * *c;
      *c = v;
    }
  }
}

// Grid: (ceil(N / TILE_N), ceil(M / TILE_M), batch); block: GEMM_THREADS.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
sgemm_nn(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
         const float* __restrict__ bias, int M, int N, int K, float alpha, float beta,
         int bias_mode, long long stride_a, long long stride_b, long long stride_c) {
  sgemm_tile<false, false>(A, B, C, bias, M, N, K, alpha, beta, bias_mode, stride_a, stride_b,
                           stride_c);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
sgemm_nt(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
         const float* __restrict__ bias, int M, int N, int K, float alpha, float beta,
         int bias_mode, long long stride_a, long long stride_b, long long stride_c) {
  sgemm_tile<false, true>(A, B, C, bias, M, N, K, alpha, beta, bias_mode, stride_a, stride_b,
                          stride_c);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
sgemm_tn(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
         const float* __restrict__ bias, int M, int N, int K, float alpha, float beta,
         int bias_mode, long long stride_a, long long stride_b, long long stride_c) {
  sgemm_tile<true, false>(A, B, C, bias, M, N, K, alpha, beta, bias_mode, stride_a, stride_b,
                          stride_c);
}
