// tensor_core.cuh -- the warp-level matrix and copy instructions the tensor-core kernels use,
// as small functions: inline PTX on a GPU (sm_80 and later), the emulator's warp collectives
// under simt.h (SIMT_EMULATION), with the same semantics (simt.h's "matrix instructions"
// section has the PTX ISA's fragment tables; tests/test_sim_matrix.py checks them against NumPy).
//
//   Rounding (operands of the tensor cores)
//     unsigned tf32_bits(float x)      cvt.rna.tf32.f32: x rounded to 10 fraction bits, ties away
//     float    round_tf32(float x)     from zero, as a 32-bit pattern / as the float it is
//     bf16, float_to_bf16, pack_bf16x2, ...   see bf16.cuh (included here)
//
//   Matrix products, one warp, all 32 lanes converged; acc += A B in FP32 (g = lane / 4,
//   t = lane % 4; a fragment element is (row, column) of the operand tile):
//     mma_tf32_16x8x8(acc, a, b)       A 16x8 tf32:  a[r] = A[g + 8 (r%2)][t + 4 (r/2)]   r < 4
//                                      B 8x8 tf32:   b[r] = B[t + 4 r][g]                  r < 2
//     mma_bf16_16x8x16(acc, a, b)      A 16x16 bf16: a[r] = A[g + 8 (r%2)][2t + 8 (r/2) + {0,1}]
//                                      B 16x8 bf16:  b[r] = B[2t + 8 r + {0,1}][g]  ({0,1}: low,
//                                      high half of the word)
//                                      acc[r] = C[g + 8 (r/2)][2t + r%2] for both
//
//   Shared memory -> registers, one warp (ldmatrix.sync.aligned.m8n8.b16): lanes 8i..8i+7 give
//   the 16-byte-aligned shared addresses of the 8 rows (16 bytes each) of matrix i; lane l gets
//   in r[i] the 16-bit pair (row l/4, columns 2(l%4), +1) of matrix i; _trans: of its transpose.
//     ldmatrix_x1(r, row), ldmatrix_x2(r, row), ldmatrix_x4(r, row), ldmatrix_x2_trans,
//     ldmatrix_x4_trans                 (r: unsigned[1], [2] or [4])
//   A tf32 (32-bit) tile read through ldmatrix is an 8 x 8 b16 matrix of 8 rows x 4 tf32: lane l
//   gets element (l/4, l%4), which is exactly the tf32 fragment order above.
//
//   Global -> shared memory, asynchronous (cp.async, one thread):
//     cp_async_16(smem, gmem, src_bytes)   .cg (L2 only), 16 bytes, both 16-byte aligned
//     cp_async_8 / cp_async_4(...)         .ca, 8 or 4 bytes
//       reads src_bytes <= size bytes, zero-fills the rest (src_bytes = 0: a zero pad, gmem
//       must still be a valid address)
//     cp_async_commit()                    close the thread's current group of copies
//     cp_async_wait<N>()                   wait until at most N of the thread's groups are in
//                                          flight; other threads' copies need a __syncthreads()
//                                          after their wait before this thread may read them.
#ifndef CUPYCNN_TENSOR_CORE_CUH
#define CUPYCNN_TENSOR_CORE_CUH
#include "bf16.cuh"

// ---------------------------------------------------------------------------- rounding
__device__ __forceinline__ unsigned tf32_bits(float x) {
#ifdef SIMT_EMULATION
  return __float_as_uint(simt_cvt_rna_tf32(x));
#else
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
#endif
}

__device__ __forceinline__ float round_tf32(float x) { return __uint_as_float(tf32_bits(x)); }

// ----------------------------------------------------------------------- matrix products
__device__ __forceinline__ void mma_tf32_16x8x8(float (&acc)[4], const unsigned (&a)[4],
                                                const unsigned (&b)[2]) {
#ifdef SIMT_EMULATION
  simt_mma_m16n8k8_tf32(acc, a, b, acc);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

__device__ __forceinline__ void mma_bf16_16x8x16(float (&acc)[4], const unsigned (&a)[4],
                                                 const unsigned (&b)[2]) {
#ifdef SIMT_EMULATION
  simt_mma_m16n8k16_bf16(acc, a, b, acc);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// ------------------------------------------------------------------------------ ldmatrix
#ifndef SIMT_EMULATION
// The 32-bit shared-state-space address of a generic pointer into shared memory.
__device__ __forceinline__ unsigned shared_address(const void* p) {
  unsigned r;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
}
#endif

__device__ __forceinline__ void ldmatrix_x1(unsigned (&r)[1], const void* row) {
#ifdef SIMT_EMULATION
  simt_ldmatrix(r, 1, false, row);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];"
               : "=r"(r[0]) : "r"(shared_address(row)));
#endif
}

__device__ __forceinline__ void ldmatrix_x2(unsigned (&r)[2], const void* row) {
#ifdef SIMT_EMULATION
  simt_ldmatrix(r, 2, false, row);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];"
               : "=r"(r[0]), "=r"(r[1]) : "r"(shared_address(row)));
#endif
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* row) {
#ifdef SIMT_EMULATION
  simt_ldmatrix(r, 4, false, row);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address(row)));
#endif
}

__device__ __forceinline__ void ldmatrix_x2_trans(unsigned (&r)[2], const void* row) {
#ifdef SIMT_EMULATION
  simt_ldmatrix(r, 2, true, row);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];"
               : "=r"(r[0]), "=r"(r[1]) : "r"(shared_address(row)));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* row) {
#ifdef SIMT_EMULATION
  simt_ldmatrix(r, 4, true, row);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address(row)));
#endif
}

// ------------------------------------------------------------------------------ cp.async
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
#ifdef SIMT_EMULATION
  simt_cp_async(smem, gmem, 16, src_bytes, true);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
               :: "r"(shared_address(smem)), "l"(gmem), "r"(src_bytes) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_8(void* smem, const void* gmem, int src_bytes) {
#ifdef SIMT_EMULATION
  simt_cp_async(smem, gmem, 8, src_bytes, false);
#else
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;"
               :: "r"(shared_address(smem)), "l"(gmem), "r"(src_bytes) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, int src_bytes) {
#ifdef SIMT_EMULATION
  simt_cp_async(smem, gmem, 4, src_bytes, false);
#else
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;"
               :: "r"(shared_address(smem)), "l"(gmem), "r"(src_bytes) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef SIMT_EMULATION
  simt_cp_async_commit();
#else
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

template <int N> __device__ __forceinline__ void cp_async_wait() {
#ifdef SIMT_EMULATION
  simt_cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
#endif
}

#endif  // CUPYCNN_TENSOR_CORE_CUH
