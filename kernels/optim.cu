// optim.cu -- fused optimizer steps: every parameter of a model is updated by ONE launch.
//
// The optimizer (cupycnn/optim/) keeps all the parameters it manages in one flat float buffer,
// their gradients in a second one and its state (momentum buffers, Adam's moments) in buffers of
// the same layout; each parameter is a segment [offset, offset + size) of them. For element i of
// a segment whose parameter group has the hyperparameters below (g: the gradient, w: the
// parameter, t: the step number counted from 1), with PyTorch's update rules:
//
//   both:      g = grad_scale * grad[i] + weight_decay * w + l1 * sign(w)     (coupled L2, L1)
//   sgd_step:  buf = g                                   on a group's first step with momentum
//              buf = momentum * buf + (1 - dampening) * g                       on later steps
//              g   = nesterov ? g + momentum * buf : buf                   (only if momentum != 0)
//              w   = w - lr * g                                                 (torch.optim.SGD)
//   adam_step: w   = w * (1 - lr * decoupled_weight_decay)                  (AdamW; 1 for Adam)
//              m   = beta1 * m + (1 - beta1) * g
//              v   = beta2 * v + (1 - beta2) * g^2
//              w   = w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//                                                               (torch.optim.Adam and AdamW)
//
// The gradients are only read (grad_scale folds a data-parallel average in without rewriting
// them). Two small tables say what to do where:
//   segments [num_segments][SEGMENT_FIELDS] long long: offset, size, group and first block of each
//            parameter, sorted by offset; built once when the optimizer is made.
//   groups   [num_groups][SGD_FIELDS or ADAM_FIELDS] float: each group's hyperparameters in the
//            form the update uses (1 - dampening, 1 - beta1, ... computed in double on the host);
//            uploaded again (in place) only when a hyperparameter (a schedule's lr) or a
//            group's state changed.
//   step     [1] long long: Adam's step number t, which changes every step. Read from device
//            memory, not passed by value, so that a replayed step (a CUDA graph) reads the value
//            the host wrote before the replay.
//
// Parallelisation:
// - A segment is cut into chunks of CHUNK = OPTIM_THREADS * ELEMENTS_PER_THREAD elements, one
//   block a chunk: enough blocks to fill any GPU whatever the mix of large and small tensors,
//   and no block straddles two segments (one group, its hyperparameters held in registers).
// - A block finds its segment by a binary search over the segments' first blocks (the same few
//   addresses for every thread: broadcast reads, cached).
// - Within a chunk consecutive threads update consecutive elements (every read and write of the
//   four buffers coalesced), each element by exactly one thread: no atomics, no barriers, the
//   same bits on every run.
// - Memory-bound: SGD with momentum moves 20 bytes per element, Adam 28. Each segment starts at
//   a multiple of 32 elements (a 128-byte line), so every warp's accesses are aligned; the
//   padding between segments is never touched.
#include "common.cuh"

#define OPTIM_THREADS 256
#define ELEMENTS_PER_THREAD 8
#define CHUNK (OPTIM_THREADS * ELEMENTS_PER_THREAD)   // elements per block

// segments[s * SEGMENT_FIELDS + ...]
#define SEG_OFFSET 0
#define SEG_SIZE 1
#define SEG_GROUP 2
#define SEG_FIRST_BLOCK 3      // blocks of earlier segments: sum of ceil(size / CHUNK)
#define SEGMENT_FIELDS 4

// groups[g * SGD_FIELDS + ...] for sgd_step
#define SGD_LR 0
#define SGD_MOMENTUM 1
#define SGD_ONE_MINUS_DAMPENING 2
#define SGD_WEIGHT_DECAY 3
#define SGD_L1 4
#define SGD_NESTEROV 5          // 0 or 1
#define SGD_MOMENTUM_MODE 6     // one of the MOMENTUM_* below
#define SGD_FIELDS 7
#define MOMENTUM_NONE 0         // momentum == 0: plain SGD, the buffer is not touched
#define MOMENTUM_FIRST 1        // the group's first step with momentum: buf = g
#define MOMENTUM_RUNNING 2      // buf = momentum * buf + (1 - dampening) * g

// groups[g * ADAM_FIELDS + ...] for adam_step
#define ADAM_LR 0
#define ADAM_BETA1 1
#define ADAM_ONE_MINUS_BETA1 2
#define ADAM_BETA2 3
#define ADAM_ONE_MINUS_BETA2 4
#define ADAM_LOG_BETA1 5        // ln(beta1): 1 - beta1^t = -expm1(t ln beta1), no cancellation
#define ADAM_LOG_BETA2 6
#define ADAM_EPS 7
#define ADAM_WEIGHT_DECAY 8     // coupled L2 (Adam); 0 for AdamW
#define ADAM_DECAY_FACTOR 9     // 1 - lr * weight_decay (AdamW); 1 for Adam
#define ADAM_L1 10
#define ADAM_FIELDS 11

// The segment that owns block `block`: the last one whose first block is <= block. Segments of
// size 0 own no block; the search skips them because the next segment has the same first block.
__device__ __forceinline__ int find_segment(const long long* __restrict__ segments,
                                            int num_segments, long long block) {
  int lo = 0, hi = num_segments - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (segments[(long long)mid * SEGMENT_FIELDS + SEG_FIRST_BLOCK] <= block) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// This block's chunk [begin, end) of the flat buffers and its group's row of the table.
struct Chunk {
  long long begin, end, group;
};

__device__ __forceinline__ Chunk this_blocks_chunk(const long long* __restrict__ segments,
                                                   int num_segments) {
  const long long block = blockIdx.x;
  const long long* seg = segments + (long long)find_segment(segments, num_segments, block) *
                                        SEGMENT_FIELDS;
  Chunk c;
  c.begin = seg[SEG_OFFSET] + (block - seg[SEG_FIRST_BLOCK]) * CHUNK;
  c.end = min(seg[SEG_OFFSET] + seg[SEG_SIZE], c.begin + CHUNK);
  c.group = seg[SEG_GROUP];
  return c;
}

// sign(w) as torch.sign: -1, 0 or 1.
__device__ __forceinline__ float sign_of(float w) {
  return (float)((w > 0.0f) - (w < 0.0f));
}

// Grid: (total number of chunks,) = the last segment's first block + its chunks; block:
// OPTIM_THREADS. momentum_buffer may be NULL when no group has MOMENTUM_FIRST or _RUNNING.
extern "C" __global__ void __launch_bounds__(OPTIM_THREADS)
sgd_step(float* __restrict__ params, const float* __restrict__ grads,
         float* __restrict__ momentum_buffer, const long long* __restrict__ segments,
         int num_segments, const float* __restrict__ groups, float grad_scale) {
  const Chunk chunk = this_blocks_chunk(segments, num_segments);
  const float* hp = groups + chunk.group * SGD_FIELDS;
  const float lr = hp[SGD_LR], momentum = hp[SGD_MOMENTUM];
  const float one_minus_dampening = hp[SGD_ONE_MINUS_DAMPENING];
  const float weight_decay = hp[SGD_WEIGHT_DECAY], l1 = hp[SGD_L1];
  const bool nesterov = hp[SGD_NESTEROV] != 0.0f;
  const int mode = (int)hp[SGD_MOMENTUM_MODE];

  for (long long i = chunk.begin + threadIdx.x; i < chunk.end; i += OPTIM_THREADS) {
    const float w = params[i];
    float g = grad_scale * grads[i];
    // The branches are uniform over the block; skipping a zero term keeps an inf or NaN weight
    // from turning 0 * w into NaN where PyTorch adds nothing.
    if (weight_decay != 0.0f) g += weight_decay * w;
    if (l1 != 0.0f) g += l1 * sign_of(w);
    if (mode != MOMENTUM_NONE) {
      const float buf = mode == MOMENTUM_FIRST ? g
                                               : momentum * momentum_buffer[i] +
                                                     one_minus_dampening * g;
      momentum_buffer[i] = buf;
      g = nesterov ? g + momentum * buf : buf;
    }
    params[i] = w - lr * g;
  }
}

// Grid and block as sgd_step; *step is t >= 1, the number of this step (every parameter of
// the optimizer has taken t - 1 steps before it).
extern "C" __global__ void __launch_bounds__(OPTIM_THREADS)
adam_step(float* __restrict__ params, const float* __restrict__ grads,
          float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
          const long long* __restrict__ segments, int num_segments,
          const float* __restrict__ groups, float grad_scale,
          const long long* __restrict__ step) {
  const Chunk chunk = this_blocks_chunk(segments, num_segments);
  const float* hp = groups + chunk.group * ADAM_FIELDS;
  const float beta1 = hp[ADAM_BETA1], one_minus_beta1 = hp[ADAM_ONE_MINUS_BETA1];
  const float beta2 = hp[ADAM_BETA2], one_minus_beta2 = hp[ADAM_ONE_MINUS_BETA2];
  const float eps = hp[ADAM_EPS], weight_decay = hp[ADAM_WEIGHT_DECAY];
  const float decay_factor = hp[ADAM_DECAY_FACTOR], l1 = hp[ADAM_L1];
  // Bias corrections 1 - beta^t as -expm1(t ln beta): 1 - 0.999f^1 in float32 would lose four
  // digits to cancellation; this keeps full float precision for every t (beta = 0 gives
  // ln beta = -inf and a correction of exactly 1).
  const float t = (float)*step;
  const float bias_correction1 = -expm1f(t * hp[ADAM_LOG_BETA1]);
  const float bias_correction2_sqrt = sqrtf(-expm1f(t * hp[ADAM_LOG_BETA2]));
  const float step_size = hp[ADAM_LR] / bias_correction1;

  for (long long i = chunk.begin + threadIdx.x; i < chunk.end; i += OPTIM_THREADS) {
    float w = params[i];
    float g = grad_scale * grads[i];
    if (weight_decay != 0.0f) g += weight_decay * w;
    if (l1 != 0.0f) g += l1 * sign_of(w);
    if (decay_factor != 1.0f) w *= decay_factor;
    const float m = beta1 * exp_avg[i] + one_minus_beta1 * g;
    const float v = beta2 * exp_avg_sq[i] + one_minus_beta2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    params[i] = w - step_size * m / (sqrtf(v) / bias_correction2_sqrt + eps);
  }
}
