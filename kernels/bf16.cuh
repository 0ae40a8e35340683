// bf16.cuh -- bfloat16 storage for kernels, without vendor headers (NVRTC has none).
//
// A bf16 is the upper half of a float32: 1 sign bit, 8 exponent bits, 7 fraction bits. Kernels
// store it as a 16-bit pattern (struct bf16) and compute in float:
//
//   bf16 v = float_to_bf16(x);      round to nearest, ties to even (cvt.rn.bf16.f32); NaN stays NaN
//   float y = bf16_to_float(v);     exact
//   unsigned p = pack_bf16x2(lo, hi);   two rounded values in one 32-bit word, lo in the low half
//                                       (the operand format of mma.sync .bf16)
//   float to_float(T) / T from_float<T>(float), for T = float or bf16: for kernels templated
//   over their storage type (load with to_float, compute in float, store with from_float<T>).
//
// On the host side a bf16 array is a uint16 array of the same bit patterns;
// cupycnn/reference/rounding.py has the NumPy twins (round_bf16, bf16_bits, bf16_to_float32).
// On a GPU the conversions are single PTX instructions (sm_80 and later); under the emulator
// (SIMT_EMULATION) they are the bit-exact models in simt.h.
#ifndef CUPYCNN_BF16_CUH
#define CUPYCNN_BF16_CUH

struct bf16 {
  unsigned short bits;
};

__device__ __forceinline__ float bf16_to_float(bf16 v) {
  return __uint_as_float((unsigned)v.bits << 16);
}

__device__ __forceinline__ bf16 float_to_bf16(float x) {
  bf16 r;
#ifdef SIMT_EMULATION
  r.bits = simt_cvt_rn_bf16(x);
#else
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
#endif
  return r;
}

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
#ifdef SIMT_EMULATION
  return (unsigned)simt_cvt_rn_bf16(lo) | ((unsigned)simt_cvt_rn_bf16(hi) << 16);
#else
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));   // d.hi = a, d.lo = b
  return r;
#endif
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16 v) { return bf16_to_float(v); }

template <class T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float v) { return float_to_bf16(v); }

#endif  // CUPYCNN_BF16_CUH
