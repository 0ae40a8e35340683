// tc_tile.cuh -- the tensor-core block tile shared by gemm_tc.cu and conv2d_tc.cu: a
// multi-stage cp.async pipeline into padded shared memory, ldmatrix fragments, mma.sync.
//
// A block computes a TC_BM x TC_BN tile of C = A B (A: M x K, B: K x N, FP32 in memory) with
// TC_WARPS_M x TC_WARPS_N warps; warp (wm, wn) owns a (TC_BM / TC_WARPS_M) x (TC_BN / TC_WARPS_N)
// sub-tile, i.e. TC_MI x TC_NI mma tiles of 16 x 8, whose FP32 accumulators live in registers.
// The reduction advances TC_BK at a time. Each step's A and B tiles are copied by cp.async (4
// bytes per element: the operands are gathered, im2col-style, by the caller's loaders; bytes
// outside the matrix are zero-filled) into one of TC_STAGES shared-memory stages, TC_STAGES - 1
// steps ahead of the mma's, so the copies of later steps overlap the products of this one.
//
// Shared memory: both tiles are stored reduction-major per row, A as [m][k], B as [n][k], each
// row TC_BK + TC_PAD floats. With the 16-byte pad, the 8 row addresses of every ldmatrix fall
// in 8 different 16-byte bank groups (row stride 80 bytes for TC_BK 16: offsets 0, 80, 160, ...
// mod 128 are all distinct), so fragment loads are free of bank conflicts.
//
// Fragments: an FP32 tile read by ldmatrix.b16 gives lane l the float (l / 4, l % 4) of each 8 x 4
// block, which is the TF32 fragment order (tensor_core.cuh); the floats are then rounded with
// cvt.rna.tf32 (TC_BF16 0). For BF16 (TC_BF16 1) a fragment register holds the pair k = 2t, 2t+1,
// so within each group of 8 k's the tile stores the even k's first, then the odd ones (tc_slot):
// one ldmatrix then gives lane l the even element and another the odd one, and pack_bf16x2 rounds
// both to BF16 (nearest even). Accumulation is FP32 in both.
//
// Operands stored in BF16 (the activations under precision bf16: conv2d_tc.cu's _bf16 entry
// points): cp.async moves 4, 8 or 16 bytes, not one 2-byte element, so such an operand's
// elements are loaded into registers when their step's copies are issued and stored into the
// stage, decoded to float (exact), by the loader's flush(), which tc_mainloop calls after the
// current stage's product: the loads' latency hides behind the mma's, as the cp.async's does
// (TcCopies). The shared tiles and fragments are then the same as for FP32 storage; the BF16
// rounding of pack_bf16x2 leaves a decoded BF16 value unchanged, so a product on BF16 storage
// is bit for bit the product on its float32 copy.
//
// The configuration (TC_BM, TC_BN, TC_BK, TC_WARPS_M, TC_WARPS_N, TC_STAGES, TC_BF16) is chosen
// per shape by cupycnn/ops/tiles.py and passed as -D defines; nothing here repeats it.
#ifndef CUPYCNN_TC_TILE_CUH
#define CUPYCNN_TC_TILE_CUH
#include "tensor_core.cuh"

#if !defined(TC_BM) || !defined(TC_BN) || !defined(TC_BK) || !defined(TC_WARPS_M) || \
    !defined(TC_WARPS_N) || !defined(TC_STAGES) || !defined(TC_BF16)
#error "tc_tile.cuh: compile with the TC_* defines of a configuration from cupycnn/ops/tiles.py"
#endif

#define TC_THREADS (32 * TC_WARPS_M * TC_WARPS_N)
#define TC_WARP_M (TC_BM / TC_WARPS_M)            // rows of C per warp
#define TC_WARP_N (TC_BN / TC_WARPS_N)            // columns of C per warp
#define TC_MI (TC_WARP_M / 16)                    // mma tiles per warp along M
#define TC_NI (TC_WARP_N / 8)                     // ... along N
#define TC_PAD 4                                  // floats of padding per shared row
#define TC_LD (TC_BK + TC_PAD)                    // floats per shared row
#define TC_MMA_K (TC_BF16 ? 16 : 8)
#define TC_A_LOADS (TC_BM * TC_BK / TC_THREADS)   // A elements each thread copies per step
#define TC_B_LOADS (TC_BN * TC_BK / TC_THREADS)

#if TC_WARP_M % 16 || TC_WARP_N % 16 || TC_BK % 16 || TC_THREADS % TC_BK || \
    TC_THREADS % TC_BM || TC_THREADS % TC_BN || (TC_BM * TC_BK) % TC_THREADS || \
    (TC_BN * TC_BK) % TC_THREADS || TC_STAGES < 2
#error "tc_tile.cuh: unsupported tile configuration"
#endif

// Where reduction index k (0 <= k < TC_BK) of a row is stored.
__device__ __forceinline__ int tc_slot(int k) {
#if TC_BF16
  const int j = k & 7;
  return (k & ~7) + (j & 1) * 4 + (j >> 1);     // per 8: k = 0 2 4 6 1 3 5 7
#else
  return k;
#endif
}

// One stage of shared memory: the A tile then the B tile.
struct TcStage {
  float a[TC_BM * TC_LD];
  float b[TC_BN * TC_LD];
};

typedef float TcAcc[TC_MI][TC_NI][4];

__device__ __forceinline__ void tc_zero(TcAcc& acc) {
#pragma unroll
  for (int i = 0; i < TC_MI; ++i)
#pragma unroll
    for (int j = 0; j < TC_NI; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
}

// acc += this warp's part of the stage's A tile times its B tile.
__device__ __forceinline__ void tc_stage_product(const TcStage& s, TcAcc& acc, int warp_m0,
                                                 int warp_n0, int lane) {
#pragma unroll
  for (int kk = 0; kk < TC_BK; kk += TC_MMA_K) {
    unsigned a[TC_MI][4], b[TC_NI][2];
#pragma unroll
    for (int i = 0; i < TC_MI; ++i) {
      // Lanes 0-15 address rows 0-15 at the first 4 floats, lanes 16-31 at the next 4.
      const float* row = s.a + (warp_m0 + i * 16 + lane % 16) * TC_LD + kk + (lane / 16) * 4;
      unsigned q[4];
      ldmatrix_x4(q, row);
#if TC_BF16
      unsigned p[4];
      ldmatrix_x4(p, row + 8);
      a[i][0] = pack_bf16x2(__uint_as_float(q[0]), __uint_as_float(q[2]));
      a[i][1] = pack_bf16x2(__uint_as_float(q[1]), __uint_as_float(q[3]));
      a[i][2] = pack_bf16x2(__uint_as_float(p[0]), __uint_as_float(p[2]));
      a[i][3] = pack_bf16x2(__uint_as_float(p[1]), __uint_as_float(p[3]));
#else
#pragma unroll
      for (int r = 0; r < 4; ++r) a[i][r] = tf32_bits(__uint_as_float(q[r]));
#endif
    }
#pragma unroll
    for (int j = 0; j < TC_NI; j += 2) {
#if TC_BF16
      // One n8 tile per ldmatrix.x4: lanes 8c..8c+7 address its 8 rows at float 4c.
      unsigned q[4];
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        ldmatrix_x4(q, s.b + (warp_n0 + (j + jj) * 8 + lane % 8) * TC_LD + kk + (lane / 8) * 4);
        b[j + jj][0] = pack_bf16x2(__uint_as_float(q[0]), __uint_as_float(q[1]));
        b[j + jj][1] = pack_bf16x2(__uint_as_float(q[2]), __uint_as_float(q[3]));
      }
#else
      // Two n8 tiles per ldmatrix.x4: lanes 0-15 the first (floats 0-3, 4-7), 16-31 the second.
      unsigned q[4];
      ldmatrix_x4(q, s.b + (warp_n0 + (j + lane / 16) * 8 + lane % 8) * TC_LD + kk +
                         ((lane / 8) % 2) * 4);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        b[j][r] = tf32_bits(__uint_as_float(q[r]));
        b[j + 1][r] = tf32_bits(__uint_as_float(q[2 + r]));
      }
#endif
    }
#pragma unroll
    for (int i = 0; i < TC_MI; ++i)
#pragma unroll
      for (int j = 0; j < TC_NI; ++j) {
#if TC_BF16
        mma_bf16_16x8x16(acc[i][j], a[i], b[j]);
#else
        mma_tf32_16x8x8(acc[i][j], a[i], b[j]);
#endif
      }
  }
}

// The main loop: `steps` reduction steps of TC_BK; loader.load(step, stage) issues the copies
// of both tiles of reduction step `step` into `stage` (each thread its own elements), and
// loader.flush(stage) completes those that went through registers (TcCopies<bf16>), after the
// product that follows the issue.
template <class Loader>
__device__ __forceinline__ void tc_mainloop(Loader& loader, TcStage* stages, int steps,
                                            TcAcc& acc) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warp_m0 = (warp / TC_WARPS_N) * TC_WARP_M, warp_n0 = (warp % TC_WARPS_N) * TC_WARP_N;
  tc_zero(acc);
#pragma unroll
  for (int s = 0; s < TC_STAGES - 1; ++s) {          // the prologue: fill all stages but one
    if (s < steps) {
      loader.load(s, stages[s]);
      loader.flush(stages[s]);
    }
    cp_async_commit();
  }
  for (int step = 0; step < steps; ++step) {
    cp_async_wait<TC_STAGES - 2>();                   // this thread's copies of `step` landed
    __syncthreads();                                  // ... and everyone's; and stage step-1
                                                      // is no longer read by anyone
    const int ahead = step + TC_STAGES - 1;
    if (ahead < steps) loader.load(ahead, stages[ahead % TC_STAGES]);
    cp_async_commit();                                // (maybe empty: keeps the group count)
    tc_stage_product(stages[step % TC_STAGES], acc, warp_m0, warp_n0, lane);
    // Stage `ahead` was last read in the product of step - 1, which every thread finished
    // before the barrier above; it is read next after the barrier of step `ahead`.
    if (ahead < steps) loader.flush(stages[ahead % TC_STAGES]);
  }
  cp_async_wait<0>();
}

// Calls store(row, col, value) for every accumulator of this thread, with row and col relative
// to the block's tile (the caller adds its origin and bounds-checks).
template <class Store>
__device__ __forceinline__ void tc_epilogue(const TcAcc& acc, Store& store) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warp_m0 = (warp / TC_WARPS_N) * TC_WARP_M, warp_n0 = (warp % TC_WARPS_N) * TC_WARP_N;
#pragma unroll
  for (int i = 0; i < TC_MI; ++i)
#pragma unroll
    for (int j = 0; j < TC_NI; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r)
        store(warp_m0 + i * 16 + lane / 4 + 8 * (r / 2), warp_n0 + j * 8 + 2 * (lane % 4) + r % 2,
              acc[i][j][r]);
}

// Copy one float of an operand into a stage row (zero when !valid; src must still be a valid
// address then, e.g. the matrix's base).
__device__ __forceinline__ void tc_copy(float* row, int k, const float* src, bool valid) {
  cp_async_4(row + tc_slot(k), src, valid ? 4 : 0);
}

// A thread's N copies per step of one operand into a stage, by the operand's storage type T;
// copy i goes to `row` at reduction index k. float: cp.async, flush() does nothing. bf16: the
// element is loaded now and stored decoded by flush() (the header says why); the copy remembers
// where, as an offset in the stage (the same every step, but cheaper kept than recomputed).
template <class T, int N>
struct TcCopies;

template <int N>
struct TcCopies<float, N> {
  __device__ __forceinline__ void copy(int, TcStage&, float* row, int k, const float* src,
                                       bool valid) {
    tc_copy(row, k, src, valid);
  }
  __device__ __forceinline__ void flush(TcStage&) {}
};

template <int N>
struct TcCopies<bf16, N> {
  bf16 held[N];
  int offset[N];

  __device__ __forceinline__ void copy(int i, TcStage& s, float* row, int k, const bf16* src,
                                       bool valid) {
    bf16 v;
    v.bits = 0;
    if (valid) v = *src;
    held[i] = v;
    offset[i] = (int)(row + tc_slot(k) - reinterpret_cast<float*>(&s));
  }
  __device__ __forceinline__ void flush(TcStage& s) {
    float* base = reinterpret_cast<float*>(&s);
#pragma unroll
    for (int i = 0; i < N; ++i) base[offset[i]] = to_float(held[i]);
  }
};

#endif  // CUPYCNN_TC_TILE_CUH
