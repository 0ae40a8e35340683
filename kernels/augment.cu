// augment.cu -- data augmentation and normalisation: uint8 NHWC batches in, float32 NCHW out.
//
// Every kernel reads a batch of images as the loader holds them, uint8 [B, H, W, C], and writes
// what a network eats, float32 [B, C, H, W] normalised per channel, in one pass:
//
//   out[b, c, y, x] = (v / 255 - mean[c]) / std[c] = v * scale[c] + shift[c]
//
// where v is the (possibly resampled) pixel value in 0..255 and the wrapper passes
// scale[c] = 1 / (255 std[c]) and shift[c] = -mean[c] / std[c] (one fused multiply-add here).
//
//   normalize:        v = images[b, y, x, c]                                     (evaluation)
//   random_crop_flip: pad by P zero pixels, crop H x W at a random offset (oy, ox) in [0, 2P]^2,
//                     then flip horizontally with probability p (torchvision's
//                     RandomCrop(size, padding=P) + RandomHorizontalFlip(p)):
//                       xc = flip ? W-1-x : x
//                       v  = images[b, y+oy-P, xc+ox-P, c], or 0 outside the image
//   affine_warp:      rotation, zoom, shift and horizontal flip, one inverse map per image:
//                       xf = flip ? W-1-x : x
//                       (u, v) = (xf - cx - tx, y - cy - ty)        c = ((W-1)/2, (H-1)/2)
//                       (xs, ys) = c + R(angle) (zx u, zy v)         R = [[cos, -sin], [sin, cos]]
//                     and the pixel is read at (xs, ys) with bilinear or nearest interpolation,
//                     taps outside the image filled by fill_mode (constant cval, nearest edge,
//                     reflect, wrap). Pixel centres sit at integer coordinates.
//   random_crop_flip_params, affine_params: write the per-image parameters the two kernels
//                     above draw, for inspection and for the tests.
//
// Randomness: each image's parameters come from Philox (common.cuh) keyed by (seed, stream,
// index): seed is the transform's, stream its batch counter, index = b * DRAWS + k for the k-th
// draw of image b. Nothing depends on the grid, so cuda, sim and reference/augment.py draw the
// same numbers. The affine geometry (sin and cos included, by a polynomial below) is computed
// with every float operation rounded on its own (__fmul_rn / __fadd_rn: no fused multiply-add),
// in the order reference/augment.py uses: every device picks the same source pixels and the same
// interpolation weights, bit for bit. Only the final blend and normalisation round differently.
//
// Parallelisation:
// - Grid (ceil(H*W / AUGMENT_THREADS), B): a block covers AUGMENT_THREADS consecutive output
//   pixels of one image, a thread one pixel with all its channels.
// - Writes: for each channel a warp writes 32 consecutive floats of one output plane (coalesced).
//   Reads: the warp's 32 * C contiguous input bytes (a pixel's C channel loads hit the same cache
//   lines, so DRAM reads each byte once).
// - The geometric kernels gather neighbouring source pixels from L1/L2. No shared-memory staging:
//   a warp's footprint depends on the random geometry, and a whole image need not fit.
// - Thread 0 of each block draws the image's parameters into shared memory (a few hundred
//   instructions per 256 pixels, overlapped by the other resident blocks) instead of every
//   thread drawing them.
#include "common.cuh"

#define AUGMENT_THREADS 256          // output pixels per block (one per thread)
#define PARAMS_THREADS 256           // images per block of the *_params kernels
#define CROP_DRAWS 3                 // per image: row offset, column offset, flip
#define CROP_PARAMS 3                // written per image: offset_y, offset_x, flip
#define AFFINE_DRAWS 6               // per image: angle, zoom x, zoom y, shift x, shift y, flip
#define AFFINE_PARAMS 6              // written per image, in the same order

#define INTERP_NEAREST 0
#define INTERP_BILINEAR 1
#define FILL_CONSTANT 0              // taps outside the image read cval
#define FILL_NEAREST 1               // ... read the nearest edge pixel   (aaaa|abcd|dddd)
#define FILL_REFLECT 2               // ... mirror, edge repeated         (dcba|abcd|dcba)
#define FILL_WRAP 3                  // ... wrap around                   (abcd|abcd|abcd)

// Source coordinates are clamped to +-2^24 before conversion to int: far outside any image,
// and it keeps the conversion defined whatever the zoom.
#define COORDINATE_LIMIT 16777216.0f

// Rounded float operations that the compiler may not fuse into an FMA: the geometry must be
// the same bits on the GPU, under the emulator and in NumPy.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }

// Uniform integer in [0, n): the high word of word * n (multiply-shift; n is small here).
__device__ __forceinline__ int philox_below(unsigned long long seed, unsigned long long stream,
                                            unsigned long long index, int n) {
  return (int)(((unsigned long long)philox_word(seed, stream, index) * (unsigned)n) >> 32);
}

// Uniform in [low, high): low + u * (high - low), so low == high gives exactly low.
__device__ __forceinline__ float philox_range(unsigned long long seed, unsigned long long stream,
                                              unsigned long long index, float low, float high) {
  return add_rn(low, mul_rn(philox_uniform(seed, stream, index), add_rn(high, -low)));
}

// ------------------------------------------------------------------------------- normalize

template <class T>
__device__ __forceinline__ void normalize_body(const unsigned char* __restrict__ images,
    T* __restrict__ out,
          const float* __restrict__ scale, const float* __restrict__ shift, int height,
          int width, int channels) {
  const int b = blockIdx.y;
  const int pixel = blockIdx.x * AUGMENT_THREADS + threadIdx.x;   // y * width + x
  const int plane = height * width;
  if (pixel >= plane) return;
  const unsigned char* source = images + ((long long)b * plane + pixel) * channels;
  T* target = out + (long long)b * channels * plane + pixel;
  for (int c = 0; c < channels; ++c)
    target[(long long)c * plane] = from_float<T>(fmaf((float)source[c], scale[c], shift[c]));
}

extern "C" __global__ void __launch_bounds__(AUGMENT_THREADS)
normalize(const unsigned char* __restrict__ images, float* __restrict__ out,
          const float* __restrict__ scale, const float* __restrict__ shift, int height,
          int width, int channels) {
  normalize_body(images, out, scale, shift, height, width, channels);
}

extern "C" __global__ void __launch_bounds__(AUGMENT_THREADS)
normalize_bf16(const unsigned char* __restrict__ images, bf16* __restrict__ out,
          const float* __restrict__ scale, const float* __restrict__ shift, int height,
          int width, int channels) {
  normalize_body(images, out, scale, shift, height, width, channels);
}

// ------------------------------------------------------------------------ random crop, flip

struct CropFlip {
  int offset_y, offset_x, flip;      // crop origin in the padded image, in [0, 2P]; flip 0/1
};

__device__ __forceinline__ CropFlip draw_crop_flip(unsigned long long seed,
                                                   unsigned long long stream, int b, int padding,
                                                   float flip_probability) {
  const unsigned long long first = (unsigned long long)b * CROP_DRAWS;
  CropFlip p;
  p.offset_y = philox_below(seed, stream, first + 0, 2 * padding + 1);
  p.offset_x = philox_below(seed, stream, first + 1, 2 * padding + 1);
  p.flip = philox_uniform(seed, stream, first + 2) < flip_probability;
  return p;
}

// params: int [batch, CROP_PARAMS]. Grid: ceil(batch / PARAMS_THREADS); one thread per image.
extern "C" __global__ void __launch_bounds__(PARAMS_THREADS)
random_crop_flip_params(unsigned long long seed, unsigned long long stream, int batch,
                        int padding, float flip_probability, int* __restrict__ params) {
  const int b = blockIdx.x * PARAMS_THREADS + threadIdx.x;
  if (b >= batch) return;
  const CropFlip p = draw_crop_flip(seed, stream, b, padding, flip_probability);
  params[b * CROP_PARAMS + 0] = p.offset_y;
  params[b * CROP_PARAMS + 1] = p.offset_x;
  params[b * CROP_PARAMS + 2] = p.flip;
}

template <class T>
__device__ __forceinline__ void random_crop_flip_body(const unsigned char* __restrict__ images,
    T* __restrict__ out,
                 const float* __restrict__ scale, const float* __restrict__ shift, int height,
                 int width, int channels, int padding, float flip_probability,
                 unsigned long long seed, unsigned long long stream) {
  __shared__ CropFlip params;
  const int b = blockIdx.y;
  if (threadIdx.x == 0) params = draw_crop_flip(seed, stream, b, padding, flip_probability);
  __syncthreads();
  const int pixel = blockIdx.x * AUGMENT_THREADS + threadIdx.x;
  const int plane = height * width;
  if (pixel >= plane) return;                        // after the barrier: every thread reaches it
  const int y = pixel / width, x = pixel - y * width;
  const int x_cropped = params.flip ? width - 1 - x : x;     // the flip acts on the crop
  const int ys = y + params.offset_y - padding, xs = x_cropped + params.offset_x - padding;
  const bool inside = ys >= 0 && ys < height && xs >= 0 && xs < width;
  const unsigned char* source =
      images + (inside ? (((long long)b * height + ys) * width + xs) * channels : 0);
  T* target = out + (long long)b * channels * plane + pixel;
  for (int c = 0; c < channels; ++c) {
    const float v = inside ? (float)source[c] : 0.0f;       // padding is pixel value 0
    target[(long long)c * plane] = from_float<T>(fmaf(v, scale[c], shift[c]));
  }
}

extern "C" __global__ void __launch_bounds__(AUGMENT_THREADS)
random_crop_flip(const unsigned char* __restrict__ images, float* __restrict__ out,
                 const float* __restrict__ scale, const float* __restrict__ shift, int height,
                 int width, int channels, int padding, float flip_probability,
                 unsigned long long seed, unsigned long long stream) {
  random_crop_flip_body(images, out, scale, shift, height, width, channels, padding,
    flip_probability, seed, stream);
}

extern "C" __global__ void __launch_bounds__(AUGMENT_THREADS)
random_crop_flip_bf16(const unsigned char* __restrict__ images, bf16* __restrict__ out,
                 const float* __restrict__ scale, const float* __restrict__ shift, int height,
                 int width, int channels, int padding, float flip_probability,
                 unsigned long long seed, unsigned long long stream) {
  random_crop_flip_body(images, out, scale, shift, height, width, channels, padding,
    flip_probability, seed, stream);
}

// ------------------------------------------------------------------------------ affine warp

// The ranges each parameter is drawn from, as the kernels receive them.
struct AffineRanges {
  float rotation_low, rotation_high;   // degrees, counter-clockwise as displayed
  float zoom_x_low, zoom_x_high, zoom_y_low, zoom_y_high;
  float shift_x_low, shift_x_high, shift_y_low, shift_y_high;   // pixels; + moves content right/down
  float flip_probability;
  int same_zoom;                       // 1: zoom_y = zoom_x (one draw, isotropic)
  int zoom_is_magnification;           // 1: zoom z shows the image z times larger (step 1/z,
                                       //    torchvision's scale); 0: sampling step z (Keras)
};

struct AffineParams {
  float angle, zoom_x, zoom_y, shift_x, shift_y, flip;
};

__device__ __forceinline__ AffineParams draw_affine(unsigned long long seed,
                                                    unsigned long long stream, int b,
                                                    const AffineRanges& r) {
  const unsigned long long first = (unsigned long long)b * AFFINE_DRAWS;
  AffineParams p;
  p.angle = philox_range(seed, stream, first + 0, r.rotation_low, r.rotation_high);
  p.zoom_x = philox_range(seed, stream, first + 1, r.zoom_x_low, r.zoom_x_high);
  p.zoom_y = r.same_zoom ? p.zoom_x
                         : philox_range(seed, stream, first + 2, r.zoom_y_low, r.zoom_y_high);
  p.shift_x = philox_range(seed, stream, first + 3, r.shift_x_low, r.shift_x_high);
  p.shift_y = philox_range(seed, stream, first + 4, r.shift_y_low, r.shift_y_high);
  p.flip = philox_uniform(seed, stream, first + 5) < r.flip_probability ? 1.0f : 0.0f;
  return p;
}

// sin and cos of an angle in degrees, identical bits on every device (libm's and CUDA's sinf
// differ in the last place). The angle is reduced exactly to r in [-45, 45] degrees plus a
// quarter turn count q, so multiples of 90 degrees give exact 0 and +-1; then Taylor
// polynomials to x^9 (sin) and x^10 (cos) for |x| <= pi/4 (truncation error below 2^-26;
// rounded in float32, within 2.5e-7 of the true values).
__device__ __forceinline__ void sincos_degrees(float degrees, float* s, float* c) {
  const float quarter_turns = rintf(degrees / 90.0f);
  const float r = add_rn(degrees, -mul_rn(quarter_turns, 90.0f));
  const float x = mul_rn(r, 0x1.1df46ap-6f);                       // pi / 180
  const float x2 = mul_rn(x, x);
  float ps = add_rn(-0x1.a01a02p-13f, mul_rn(x2, 0x1.71de3ap-19f));    // -1/5040, 1/362880
  ps = add_rn(0x1.111112p-7f, mul_rn(x2, ps));                         // 1/120
  ps = add_rn(-0x1.555556p-3f, mul_rn(x2, ps));                        // -1/6
  const float sin_r = add_rn(x, mul_rn(mul_rn(x, x2), ps));
  float pc = add_rn(0x1.a01a02p-16f, mul_rn(x2, -0x1.27e4fcp-22f));    // 1/40320, -1/3628800
  pc = add_rn(-0x1.6c16c2p-10f, mul_rn(x2, pc));                       // -1/720
  pc = add_rn(0x1.555556p-5f, mul_rn(x2, pc));                         // 1/24
  pc = add_rn(-0.5f, mul_rn(x2, pc));
  const float cos_r = add_rn(1.0f, mul_rn(x2, pc));
  switch ((int)quarter_turns & 3) {                 // two's complement: -1 & 3 == 3
    case 0:  *s = sin_r;  *c = cos_r;  break;
    case 1:  *s = cos_r;  *c = -sin_r; break;
    case 2:  *s = -sin_r; *c = -cos_r; break;
    default: *s = -cos_r; *c = sin_r;  break;
  }
}

// The per-image inverse map: output pixel (x, y) reads the source at
//   u = xf - origin_x, v = y - origin_y,  xs = centre_x + (a u + b v),  ys = centre_y + (c u + d v)
struct AffineMap {
  float a, b, c, d, origin_x, origin_y, centre_x, centre_y;
  int flip;
};

__device__ __forceinline__ AffineMap affine_map(const AffineParams& p, int height, int width,
                                                int zoom_is_magnification) {
  // Sampling steps: the drawn zoom (Keras), or its reciprocal (a magnification, torchvision).
  const float step_x = zoom_is_magnification ? 1.0f / p.zoom_x : p.zoom_x;
  const float step_y = zoom_is_magnification ? 1.0f / p.zoom_y : p.zoom_y;
  float s, c;
  sincos_degrees(p.angle, &s, &c);
  AffineMap m;
  m.a = mul_rn(c, step_x);
  m.b = -mul_rn(s, step_y);
  m.c = mul_rn(s, step_x);
  m.d = mul_rn(c, step_y);
  m.centre_x = 0.5f * (float)(width - 1);
  m.centre_y = 0.5f * (float)(height - 1);
  m.origin_x = add_rn(m.centre_x, p.shift_x);
  m.origin_y = add_rn(m.centre_y, p.shift_y);
  m.flip = p.flip != 0.0f;
  return m;
}

// params: float [batch, AFFINE_PARAMS]. Grid: ceil(batch / PARAMS_THREADS); one thread per image.
extern "C" __global__ void __launch_bounds__(PARAMS_THREADS)
affine_params(unsigned long long seed, unsigned long long stream, int batch,
              float rotation_low, float rotation_high, float zoom_x_low, float zoom_x_high,
              float zoom_y_low, float zoom_y_high, float shift_x_low, float shift_x_high,
              float shift_y_low, float shift_y_high, float flip_probability, int same_zoom,
              int zoom_is_magnification, float* __restrict__ params) {
  const int b = blockIdx.x * PARAMS_THREADS + threadIdx.x;
  if (b >= batch) return;
  const AffineRanges r = {rotation_low, rotation_high, zoom_x_low, zoom_x_high, zoom_y_low,
                          zoom_y_high, shift_x_low, shift_x_high, shift_y_low, shift_y_high,
                          flip_probability, same_zoom, zoom_is_magnification};
  const AffineParams p = draw_affine(seed, stream, b, r);
  float* row = params + (long long)b * AFFINE_PARAMS;
  row[0] = p.angle;
  row[1] = p.zoom_x;
  row[2] = p.zoom_y;
  row[3] = p.shift_x;
  row[4] = p.shift_y;
  row[5] = p.flip;
}

// Index i along an axis of n pixels after the fill mode: in [0, n), or -1 for "read cval".
__device__ __forceinline__ int fill_index(int i, int n, int fill_mode) {
  if (i >= 0 && i < n) return i;
  if (fill_mode == FILL_NEAREST) return i < 0 ? 0 : n - 1;
  if (fill_mode == FILL_REFLECT) {
    const int period = 2 * n;
    int m = i % period;
    if (m < 0) m += period;
    return m < n ? m : period - 1 - m;
  }
  if (fill_mode == FILL_WRAP) {
    const int m = i % n;
    return m < 0 ? m + n : m;
  }
  return -1;                                        // FILL_CONSTANT
}

template <class T>
__device__ __forceinline__ void affine_warp_body(const unsigned char* __restrict__ images,
    T* __restrict__ out,
            const float* __restrict__ scale, const float* __restrict__ shift, int height,
            int width, int channels, float rotation_low, float rotation_high, float zoom_x_low,
            float zoom_x_high, float zoom_y_low, float zoom_y_high, float shift_x_low,
            float shift_x_high, float shift_y_low, float shift_y_high, float flip_probability,
            int same_zoom, int zoom_is_magnification, int interpolation, int fill_mode,
            float cval, unsigned long long seed, unsigned long long stream) {
  __shared__ AffineMap map;
  const int b = blockIdx.y;
  if (threadIdx.x == 0) {
    const AffineRanges r = {rotation_low, rotation_high, zoom_x_low, zoom_x_high, zoom_y_low,
                            zoom_y_high, shift_x_low, shift_x_high, shift_y_low, shift_y_high,
                            flip_probability, same_zoom, zoom_is_magnification};
    map = affine_map(draw_affine(seed, stream, b, r), height, width, zoom_is_magnification);
  }
  __syncthreads();
  const int pixel = blockIdx.x * AUGMENT_THREADS + threadIdx.x;
  const int plane = height * width;
  if (pixel >= plane) return;                        // after the barrier: every thread reaches it
  const int y = pixel / width, x = pixel - y * width;
  const float u = add_rn((float)(map.flip ? width - 1 - x : x), -map.origin_x);
  const float v = add_rn((float)y, -map.origin_y);
  float xs = add_rn(map.centre_x, add_rn(mul_rn(map.a, u), mul_rn(map.b, v)));
  float ys = add_rn(map.centre_y, add_rn(mul_rn(map.c, u), mul_rn(map.d, v)));
  xs = fminf(fmaxf(xs, -COORDINATE_LIMIT), COORDINATE_LIMIT);
  ys = fminf(fmaxf(ys, -COORDINATE_LIMIT), COORDINATE_LIMIT);

  // Up to four taps (column, row) with weights; nearest uses one with weight 1.
  int tap_x[2], tap_y[2];
  float weight_x[2], weight_y[2];
  int taps;
  if (interpolation == INTERP_NEAREST) {
    tap_x[0] = fill_index((int)floorf(add_rn(xs, 0.5f)), width, fill_mode);
    tap_y[0] = fill_index((int)floorf(add_rn(ys, 0.5f)), height, fill_mode);
    weight_x[0] = weight_y[0] = 1.0f;
    taps = 1;
  } else {
    const float x0 = floorf(xs), y0 = floorf(ys);
    const float fx = add_rn(xs, -x0), fy = add_rn(ys, -y0);    // exact: the fractional parts
    tap_x[0] = fill_index((int)x0, width, fill_mode);
    tap_x[1] = fill_index((int)x0 + 1, width, fill_mode);
    tap_y[0] = fill_index((int)y0, height, fill_mode);
    tap_y[1] = fill_index((int)y0 + 1, height, fill_mode);
    weight_x[0] = add_rn(1.0f, -fx);
    weight_x[1] = fx;
    weight_y[0] = add_rn(1.0f, -fy);
    weight_y[1] = fy;
    taps = 2;
  }
  const unsigned char* image = images + (long long)b * plane * channels;
  T* target = out + (long long)b * channels * plane + pixel;
  for (int c = 0; c < channels; ++c) {
    float value = 0.0f;
    for (int j = 0; j < taps; ++j)
      for (int i = 0; i < taps; ++i) {
        const float tap = (tap_x[i] < 0 || tap_y[j] < 0)
            ? cval : (float)image[((long long)tap_y[j] * width + tap_x[i]) * channels + c];
        value += mul_rn(weight_y[j], weight_x[i]) * tap;
      }
    target[(long long)c * plane] = from_float<T>(fmaf(value, scale[c], shift[c]));
  }
}

extern "C" __global__ void __launch_bounds__(AUGMENT_THREADS)
affine_warp(const unsigned char* __restrict__ images, float* __restrict__ out,
            const float* __restrict__ scale, const float* __restrict__ shift, int height,
            int width, int channels, float rotation_low, float rotation_high, float zoom_x_low,
            float zoom_x_high, float zoom_y_low, float zoom_y_high, float shift_x_low,
            float shift_x_high, float shift_y_low, float shift_y_high, float flip_probability,
            int same_zoom, int zoom_is_magnification, int interpolation, int fill_mode,
            float cval, unsigned long long seed, unsigned long long stream) {
  affine_warp_body(images, out, scale, shift, height, width, channels, rotation_low, rotation_high,
    zoom_x_low, zoom_x_high, zoom_y_low, zoom_y_high, shift_x_low, shift_x_high, shift_y_low,
    shift_y_high, flip_probability, same_zoom, zoom_is_magnification, interpolation, fill_mode,
    cval, seed, stream);
}

extern "C" __global__ void __launch_bounds__(AUGMENT_THREADS)
affine_warp_bf16(const unsigned char* __restrict__ images, bf16* __restrict__ out,
            const float* __restrict__ scale, const float* __restrict__ shift, int height,
            int width, int channels, float rotation_low, float rotation_high, float zoom_x_low,
            float zoom_x_high, float zoom_y_low, float zoom_y_high, float shift_x_low,
            float shift_x_high, float shift_y_low, float shift_y_high, float flip_probability,
            int same_zoom, int zoom_is_magnification, int interpolation, int fill_mode,
            float cval, unsigned long long seed, unsigned long long stream) {
  affine_warp_body(images, out, scale, shift, height, width, channels, rotation_low, rotation_high,
    zoom_x_low, zoom_x_high, zoom_y_low, zoom_y_high, shift_x_low, shift_x_high, shift_y_low,
    shift_y_high, flip_probability, same_zoom, zoom_is_magnification, interpolation, fill_mode,
    cval, seed, stream);
}
