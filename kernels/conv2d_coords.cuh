// conv2d_coords.cuh -- what a convolution's GEMM row or column index stands for, shared by
// conv2d.cu and conv2d_tc.cu. Why decode once and advance with carries: conv2d.cu's header,
// "Index arithmetic"; the stride phases: the comment above its conv2d_backward_input.
//
// What a kernel calls:
//   split3<T>(index, size_b, size_c)   the coordinates {a, b, c} of index = (a size_b + b) size_c
//                                      + c, b < size_b, c < size_c (a unbounded), as a T below
//   advance3(t, step, size_b, size_c)  t += step, both split3'd with the same sizes: no division
//   phase_axis(phase, size, kernel, stride, pad)
//                                      one axis of a stride phase: the kernel rows
//                                      r = phase + stride rr it meets (rr < taps) and the input
//                                      rows first + stride a it holds (a < count)

// A GEMM row or column index stands for three coordinates, one struct per meaning:
struct Tap { int c, r, s; };         // im2col row: input channel c, kernel row r, kernel column s
struct PhaseTap { int o, rr, ss; };  // input-gradient row: output channel o, the phase's rr-th
                                     // kernel row and ss-th kernel column
struct Pixel { int n, i, j; };       // image n, row i, column j (of y, or of a phase's grid)
struct PhaseAxis { int phase, taps, first, count; };

// ------------------------------------------------------------------ the definitions

template <class T>
__device__ __forceinline__ T split3(int index, int size_b, int size_c) {
  T t;
  auto& [a, b, c] = t;
  c = index % size_c;
  index /= size_c;
  b = index % size_b;
  a = index / size_b;
  return t;
}

// Each coordinate of `step` is below its size, so one carry per coordinate suffices.
template <class T>
__device__ __forceinline__ void advance3(T& t, const T& step, int size_b, int size_c) {
  auto& [a, b, c] = t;
  const auto& [step_a, step_b, step_c] = step;
  c += step_c;
  if (c >= size_c) { c -= size_c; ++b; }
  b += step_b;
  if (b >= size_b) { b -= size_b; ++a; }
  a += step_a;
}

// The derivation above conv2d_backward_input in conv2d.cu, in code.
__device__ __forceinline__ PhaseAxis phase_axis(int phase, int size, int kernel, int stride,
                                                int pad) {
  PhaseAxis a;
  a.phase = phase;
  a.taps = phase < kernel ? (kernel - 1 - phase) / stride + 1 : 0;
  a.first = ((phase - pad) % stride + stride) % stride;
  a.count = a.first < size ? (size - 1 - a.first) / stride + 1 : 0;
  return a;
}
