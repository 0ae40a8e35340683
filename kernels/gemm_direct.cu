// gemm_direct.cu -- the definition of the dense layer's products in CUDA, one thread per output
// (step 1 of the progression: gemm_direct.cu, gemm.cu's register-tiled SIMT kernels, gemm_tc.cu
// on tensor cores): C = alpha op(A) op(B) (+ bias) + beta C, with op as in gemm.cu (trans_a:
// A is K x M, trans_b: B is N x K), FP32. Every thread reads a whole row of op(A) and column of
// op(B) from global memory: 2K loads per 2K FLOP, which is why the tiled kernels exist.
// Grid: (ceil(M N / 256), 1, batch); block 256.
extern "C" __global__ void gemm_direct(const float* __restrict__ A, const float* __restrict__ B,
                                       float* __restrict__ C, const float* __restrict__ bias,
                                       int M, int N, int K, float alpha, float beta,
                                       int bias_mode, int trans_a, int trans_b,
                                       long long stride_a, long long stride_b,
                                       long long stride_c) {
  const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (long long)M * N) return;
  const int m = (int)(e / N), n = (int)(e % N);
  A += blockIdx.z * stride_a;
  B += blockIdx.z * stride_b;
  C += blockIdx.z * stride_c;
  float sum = 0.0f;
  for (int k = 0; k < K; ++k)
    sum += (trans_a ? A[(long long)k * M + m] : A[(long long)m * K + k]) *
           (trans_b ? B[(long long)n * K + k] : B[(long long)k * N + n]);
  float v = alpha * sum + (bias_mode == 1 ? bias[m] : bias_mode == 2 ? bias[n] : 0.0f);
  if (beta != 0.0f) v += beta * C[e];
  C[e] = v;
}
