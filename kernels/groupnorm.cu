// groupnorm.cu -- group normalisation (PyTorch's GroupNorm), forward and backward.
//
// x is [N, C, *], viewed as [N, C, inner] (inner = H*W, or 1). The C channels form G groups of
// Cg = C / G consecutive channels; group (n, g) holds count = Cg * inner elements, which are
// CONTIGUOUS in memory: x viewed as [N * G, count].
//
// Forward. The statistics of each (n, g) are per-row sums of that [1, N*G, count] view:
// batchnorm_stats in batchnorm.cu computes them (sum x, sum x^2 in double; ops/groupnorm.py
// launches it), then
//   groupnorm_forward:        mean = sum x / count,  var = sum x^2 / count - mean^2   (biased)
//                             invstd = 1 / sqrt(var + eps)
//                             y = (x - mean) * invstd * weight[c] + bias[c]
//                             also writes mean[n, g] and invstd[n, g] for the backward.
// Backward, with xhat = (x - mean) * invstd and dxhat = dy * weight[c]:
//   groupnorm_backward_reduce: per (n, c): partial = (sum dy, sum dy * xhat) over the inner axis
//   groupnorm_backward_params: dbias[c] = sum over n of partial[n, c, 0]
//                              dweight[c] = sum over n of partial[n, c, 1]
//   groupnorm_backward_input:  per group, from the partial sums of its channels:
//                                sum dxhat        = sum over c in g of weight[c] * partial[n, c, 0]
//                                sum dxhat * xhat = sum over c in g of weight[c] * partial[n, c, 1]
//                              dx = invstd * (dxhat - sum dxhat / count
//                                             - xhat * sum(dxhat xhat) / count)
//
// Parallelisation:
// - groupnorm_forward, groupnorm_backward_input: grid (N * G, chunks); block (ng, k) handles the
//   k-th range of GN_ELEMENTS_PER_BLOCK contiguous elements of group ng (coalesced), stepping
//   (channel in group, pixel) with a RowColCursor. Every thread derives the group's coefficients
//   once; in the backward the block first adds its Cg channels' partial sums
//   (block_sum_pair_double, a fixed order).
// - groupnorm_backward_reduce: a warp per (n, c) row of `inner` contiguous elements,
//   GN_ROWS_PER_BLOCK rows per block, lanes on consecutive elements, accumulating in double, then
//   a warp butterfly in a fixed order. Rows are many (N * C) and usually short: a warp each keeps
//   the GPU busy without spending a block on a 7x7 image. Few long rows (batch 1, 64 channels of
//   200x300) leave SMs idle; a split like batchnorm_stats' would help there.
// - groupnorm_backward_params: a thread per channel adds the N samples' partial sums in order.
//   The per-group blocks cannot sum across samples without atomics; this small second pass keeps
//   the parameter gradients deterministic.
#include "common.cuh"

#define GN_THREADS 256
#define GN_ELEMENTS_PER_BLOCK 4096                      // 16 elements per thread
#define GN_ROWS_PER_BLOCK (GN_THREADS / WARP_SIZE)      // groupnorm_backward_reduce: 8 rows

// Grid: (N * G, ceil(count / GN_ELEMENTS_PER_BLOCK)); block: GN_THREADS.
// sums: [N * G, 2] (sum x, sum x^2) of each group; mean_out, invstd_out: [N * G].
extern "C" __global__ void __launch_bounds__(GN_THREADS)
groupnorm_forward(const float* __restrict__ x, const double* __restrict__ sums,
                  const float* __restrict__ weight, const float* __restrict__ bias,
                  float* __restrict__ y, float* __restrict__ mean_out,
                  float* __restrict__ invstd_out, int channels, int inner, int groups, float eps) {
  const int group = blockIdx.x, first_channel = (group % groups) * (channels / groups);
  const int count = channels / groups * inner;
  const double mean64 = sums[2 * group] / count;
  const double var = fmax(sums[2 * group + 1] / count - mean64 * mean64, 0.0);
  const float mean = (float)mean64, invstd = (float)rsqrt(var + (double)eps);
  if (blockIdx.y == 0 && threadIdx.x == 0) {
    mean_out[group] = mean;
    invstd_out[group] = invstd;
  }
  const long long base = (long long)group * count;
  const int begin = min(count, (int)blockIdx.y * GN_ELEMENTS_PER_BLOCK);
  const int end = min(count, begin + GN_ELEMENTS_PER_BLOCK);
  RowColCursor at(begin + threadIdx.x, blockDim.x, inner);     // (channel in group, pixel)
  for (int e = begin + threadIdx.x; e < end; e += blockDim.x, at.advance()) {
    const int c = first_channel + at.row;
    y[base + e] = (x[base + e] - mean) * invstd * weight[c] + bias[c];
  }
}

// Grid: ceil(N * C / GN_ROWS_PER_BLOCK); block: GN_THREADS. partial: [N, C, 2] float64.
extern "C" __global__ void __launch_bounds__(GN_THREADS)
groupnorm_backward_reduce(const float* __restrict__ x, const float* __restrict__ dy,
                          const float* __restrict__ mean, const float* __restrict__ invstd,
                          double* __restrict__ partial, int rows, int channels, int inner,
                          int groups) {
  const int row = blockIdx.x * GN_ROWS_PER_BLOCK + threadIdx.x / WARP_SIZE;   // row = (n, c)
  const int lane = threadIdx.x % WARP_SIZE;
  if (row >= rows) return;            // a whole warp leaves: no shuffle is left half-reached
  const int n = row / channels, c = row % channels;
  const int group = n * groups + c / (channels / groups);
  const double group_mean = mean[group];
  const long long base = (long long)row * inner;
  double sum_dy = 0.0, sum_dy_xmu = 0.0;
  for (int i = lane; i < inner; i += WARP_SIZE) {
    const double g = dy[base + i];
    sum_dy += g;
    sum_dy_xmu += g * ((double)x[base + i] - group_mean);  // exact difference: the sum may cancel
  }
  sum_dy = warp_sum_double(sum_dy);
  sum_dy_xmu = warp_sum_double(sum_dy_xmu);
  if (lane == 0) {
    partial[2 * (long long)row] = sum_dy;
    partial[2 * (long long)row + 1] = sum_dy_xmu * (double)invstd[group];
  }
}

// Grid: ceil(C / GN_THREADS); block: GN_THREADS. A thread per channel.
extern "C" __global__ void __launch_bounds__(GN_THREADS)
groupnorm_backward_params(const double* __restrict__ partial, float* __restrict__ dweight,
                          float* __restrict__ dbias, int batch, int channels) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  double sum_dy = 0.0, sum_dy_xhat = 0.0;
  for (int n = 0; n < batch; ++n) {
    const long long row = (long long)n * channels + c;
    sum_dy += partial[2 * row];
    sum_dy_xhat += partial[2 * row + 1];
  }
  dbias[c] = (float)sum_dy;
  dweight[c] = (float)sum_dy_xhat;
}

// Grid: (N * G, ceil(count / GN_ELEMENTS_PER_BLOCK)); block: GN_THREADS.
extern "C" __global__ void __launch_bounds__(GN_THREADS)
groupnorm_backward_input(const float* __restrict__ x, const float* __restrict__ dy,
                         const float* __restrict__ weight, const float* __restrict__ mean,
                         const float* __restrict__ invstd, const double* __restrict__ partial,
                         float* __restrict__ dx, int channels, int inner, int groups) {
  __shared__ double scratch[2 * WARP_SIZE];
  const int group = blockIdx.x, n = group / groups, group_channels = channels / groups;
  const int first_channel = (group % groups) * group_channels;
  const int count = group_channels * inner;
  // The group's sum dxhat and sum dxhat * xhat, from its channels' partial sums.
  double sum_dxhat = 0.0, sum_dxhat_xhat = 0.0;
  for (int k = threadIdx.x; k < group_channels; k += blockDim.x) {
    const int c = first_channel + k;
    const long long row = (long long)n * channels + c;
    sum_dxhat += (double)weight[c] * partial[2 * row];
    sum_dxhat_xhat += (double)weight[c] * partial[2 * row + 1];
  }
  block_sum_pair_double(sum_dxhat, sum_dxhat_xhat, scratch);
  const float mean_dxhat = (float)(sum_dxhat / count);
  const float mean_dxhat_xhat = (float)(sum_dxhat_xhat / count);
  const float group_mean = mean[group], group_invstd = invstd[group];

  const long long base = (long long)group * count;
  const int begin = min(count, (int)blockIdx.y * GN_ELEMENTS_PER_BLOCK);
  const int end = min(count, begin + GN_ELEMENTS_PER_BLOCK);
  RowColCursor at(begin + threadIdx.x, blockDim.x, inner);     // (channel in group, pixel)
  for (int e = begin + threadIdx.x; e < end; e += blockDim.x, at.advance()) {
    const float xhat = (x[base + e] - group_mean) * group_invstd;
    const float dxhat = dy[base + e] * weight[first_channel + at.row];
    dx[base + e] = group_invstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
  }
}
