// conv2d_coords.cuh -- what a convolution's GEMM row or column index stands for, decoded once
// (split3) and advanced by the reduction step with carries (advance3), and the input gradient's
// stride phases (phase_axis); shared by conv2d.cu and conv2d_tc.cu. Why: conv2d.cu's header,
// "Index arithmetic", and the comment above its conv2d_backward_input.

// A GEMM row or column index stands for three coordinates, one struct per meaning:
struct Tap { int c, r, s; };         // im2col row: input channel c, kernel row r, kernel column s
struct PhaseTap { int o, rr, ss; };  // input-gradient row: output channel o, the phase's rr-th
                                     // kernel row and ss-th kernel column
struct Pixel { int n, i, j; };       // image n, row i, column j (of y, or of a phase's grid)

// The coordinates {a, b, c} of `index` = (a * size_b + b) * size_c + c, with b < size_b and
// c < size_c (a unbounded), as any of the structs above.
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

// t += step, both split by split3 with the same sizes: each coordinate of `step` is below its
// size, so one carry per coordinate suffices.
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

// One axis (rows, or columns) of a stride phase of the input gradient, as derived above
// conv2d_backward_input in conv2d.cu: the phase meets the kernel rows r = phase + stride rr for
// rr < taps, and holds the input rows first + stride a for a < count.
struct PhaseAxis { int phase, taps, first, count; };

__device__ __forceinline__ PhaseAxis phase_axis(int phase, int size, int kernel, int stride,
                                                int pad) {
  PhaseAxis a;
  a.phase = phase;
  a.taps = phase < kernel ? (kernel - 1 - phase) / stride + 1 : 0;
  a.first = ((phase - pad) % stride + stride) % stride;
  a.count = a.first < size ? (size - 1 - a.first) / stride + 1 : 0;
  return a;
}
