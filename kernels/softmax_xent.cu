// softmax_xent.cu -- softmax cross-entropy, fused and numerically stable (the loss of a
// classifier: PyTorch's F.cross_entropy with reduction="mean" and label smoothing e).
//
// For logits z [N, C], class labels y [N] and smoothing e, the target of row i is
// t_ic = (1 - e) [c == y_i] + e / C. With m_i = max_c z_ic and s_i = sum_c exp(z_ic - m_i),
//
//   softmax_xent_forward:  loss_i = log s_i + (1 - e)(m_i - z_iy)  +  (e / C) sum_c (m_i - z_ic)
//                          row_loss[i] = loss_i, row_max[i] = m_i, row_sum[i] = s_i
//   batch_mean:            out[0] = (1 / n) sum_i values[i]        (the loss: mean of row_loss)
//   softmax_xent_backward: dz_ic = scale (exp(z_ic - m_i) / s_i - t_ic)   (scale = 1 / N)
//   narrow_labels:         out[i] = labels[i] if 0 <= labels[i] < C, else -1   (int64 -> int32)
//
// loss_i is -sum_c t_ic log softmax(z_i)_c rewritten so that no step can overflow or cancel:
// every exponent z - m is <= 0 (exp cannot overflow, even for logits of 1e4), and every other
// term is a sum of non-negative gaps m - z, never a difference of two large numbers (lse - z_y
// with lse = 1e4 + 0.3 would lose the 0.3 to float32 rounding). The smoothing term is skipped
// when e = 0, so that a logit of -inf (a masked class) gives 0, not 0 * inf = NaN.
//
// A label outside [0, C) makes its row's loss and gradient NaN (and with it the mean): on the
// GPU this is how a bad label shows up, since checking labels on the host would need a
// device-to-host copy every step. The sim and numpy devices check on the host first (the labels
// live there) and raise a ValueError naming the first bad label.
//
// Parallelisation:
// - Forward: one warp per row, XENT_ROWS_PER_BLOCK rows per block. A row is read twice (its
//   maximum, then the exponentials and gaps; the second read hits L1/L2), lane l taking classes
//   l, l + 32, ..., so each warp-wide load is one coalesced 128-byte line. The row's reductions
//   are register shuffles (warp_max, warp_sum): no shared memory, no __syncthreads.
// - Sizes: a classifier has C = 10 to 1000 classes; a warp per row idles 22 lanes at C = 10 and
//   loops 32 times at C = 1000. N rows make N / 4 blocks, one per SM of an H100 from N of about
//   512 up; smaller batches, or large C, would spread wider with a block per row.
// - The mean over rows is a second launch: one block summing in a fixed order (block_sum), so
//   the loss has the same bits on every run.
// - Backward: one thread per element in a grid-stride loop (coalesced), from the saved row_max
//   and row_sum: the softmax is recomputed, never stored.
#include "common.cuh"

#define XENT_ROWS_PER_BLOCK 4                                  // warps per block, a row each
#define XENT_THREADS (XENT_ROWS_PER_BLOCK * WARP_SIZE)         // 128
#define MEAN_THREADS 256

// A quiet NaN: the loss and gradient of a row whose label is not a class index.
__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fc00000); }

// Maximum of v over the 32 lanes of a warp; every lane gets it. fmaxf ignores a NaN operand, but
// a NaN logit still poisons the row through exp(NaN - m).
__device__ __forceinline__ float warp_max(float v) {
  for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(FULL_WARP_MASK, v, offset));
  return v;
}

// Grid: ceil(rows / XENT_ROWS_PER_BLOCK) blocks of XENT_THREADS. The logits' storage T is
// float or bf16 (one template, two entry points); the loss and the row statistics are float.
template <class T>
__device__ __forceinline__ void softmax_xent_forward_body(
    const T* __restrict__ logits, const int* __restrict__ labels, float* __restrict__ row_loss,
    float* __restrict__ row_max, float* __restrict__ row_sum, int rows, int classes,
    float smoothing) {
  const int lane = threadIdx.x % WARP_SIZE;
  const int row = blockIdx.x * XENT_ROWS_PER_BLOCK + threadIdx.x / WARP_SIZE;
  if (row >= rows) return;              // the same for all lanes: a whole warp leaves
  const T* z = logits + (long long)row * classes;

  float m = FLOAT_LOWEST;
  for (int c = lane; c < classes; c += WARP_SIZE) m = fmaxf(m, to_float(z[c]));
  m = warp_max(m);

  float sum_exp = 0.0f, sum_gap = 0.0f;  // sum of exp(z - m) and of (m - z): all terms >= 0
  for (int c = lane; c < classes; c += WARP_SIZE) {
    const float v = to_float(z[c]);
    sum_exp += expf(v - m);
    sum_gap += m - v;
  }
  sum_exp = warp_sum(sum_exp);
  sum_gap = warp_sum(sum_gap);

  if (lane == 0) {
    const int y = labels[row];
    float loss;
    if (y < 0 || y >= classes) {
      loss = quiet_nan();
    } else {
      loss = logf(sum_exp) + (1.0f - smoothing) * (m - to_float(z[y]));
      if (smoothing != 0.0f) loss += smoothing / (float)classes * sum_gap;
    }
    row_loss[row] = loss;
    row_max[row] = m;
    row_sum[row] = sum_exp;
  }
}

extern "C" __global__ void __launch_bounds__(XENT_THREADS)
softmax_xent_forward(const float* __restrict__ logits, const int* __restrict__ labels,
                     float* __restrict__ row_loss, float* __restrict__ row_max,
                     float* __restrict__ row_sum, int rows, int classes, float smoothing) {
  softmax_xent_forward_body(logits, labels, row_loss, row_max, row_sum, rows, classes, smoothing);
}

extern "C" __global__ void __launch_bounds__(XENT_THREADS)
softmax_xent_forward_bf16(const bf16* __restrict__ logits, const int* __restrict__ labels,
                          float* __restrict__ row_loss, float* __restrict__ row_max,
                          float* __restrict__ row_sum, int rows, int classes, float smoothing) {
  softmax_xent_forward_body(logits, labels, row_loss, row_max, row_sum, rows, classes, smoothing);
}

// Grid: 1 block of MEAN_THREADS. A batch has at most a few thousand rows: one block is enough,
// and one block means one fixed summation order.
extern "C" __global__ void __launch_bounds__(MEAN_THREADS)
batch_mean(const float* __restrict__ values, float* __restrict__ out, int n) {
  __shared__ float scratch[WARP_SIZE];
  float acc = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc += values[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) out[0] = acc / (float)n;
}

// Grid-stride over rows * classes elements (any grid). Logits and their gradient in storage T.
template <class T>
__device__ __forceinline__ void softmax_xent_backward_body(
    const T* __restrict__ logits, const int* __restrict__ labels,
    const float* __restrict__ row_max, const float* __restrict__ row_sum,
    T* __restrict__ dlogits, int rows, int classes, float smoothing, float scale) {
  const long long total = (long long)rows * classes;
  const float off_target = smoothing / (float)classes;     // e / C, every class's share
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (long long)blockDim.x * gridDim.x) {
    const int row = (int)(e / classes);
    const int c = (int)(e - (long long)row * classes);
    const int y = labels[row];
    float grad;
    if (y < 0 || y >= classes) {
      grad = quiet_nan();
    } else {
      const float p = expf(to_float(logits[e]) - row_max[row]) / row_sum[row];
      const float target = (c == y ? 1.0f - smoothing : 0.0f) + off_target;
      grad = (p - target) * scale;
    }
    dlogits[e] = from_float<T>(grad);
  }
}

extern "C" __global__ void softmax_xent_backward(const float* __restrict__ logits,
                                                 const int* __restrict__ labels,
                                                 const float* __restrict__ row_max,
                                                 const float* __restrict__ row_sum,
                                                 float* __restrict__ dlogits, int rows,
                                                 int classes, float smoothing, float scale) {
  softmax_xent_backward_body(logits, labels, row_max, row_sum, dlogits, rows, classes, smoothing,
                             scale);
}

extern "C" __global__ void softmax_xent_backward_bf16(const bf16* __restrict__ logits,
                                                      const int* __restrict__ labels,
                                                      const float* __restrict__ row_max,
                                                      const float* __restrict__ row_sum,
                                                      bf16* __restrict__ dlogits, int rows,
                                                      int classes, float smoothing,
                                                      float scale) {
  softmax_xent_backward_body(logits, labels, row_max, row_sum, dlogits, rows, classes, smoothing,
                             scale);
}

// Grid-stride over n labels. Labels of a dtype wider than int32 (int64, uint32, uint64) arrive
// here as int64: narrowing them on the device keeps 2^32 + 3 from wrapping to the valid class 3.
extern "C" __global__ void narrow_labels(const long long* __restrict__ labels,
                                         int* __restrict__ out, int n, int classes) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    const long long y = labels[i];
    out[i] = (y >= 0 && y < classes) ? (int)y : -1;
  }
}
