// tc_tile.cuh -- the tensor-core block tile shared by gemm_tc.cu and conv2d_tc.cu: a
// multi-stage cp.async pipeline into padded shared memory, ldmatrix fragments, mma.sync.
//
// A block computes a TC_BM x TC_BN tile of C = A B (A: M x K, B: K x N, FP32 in memory) with
// TC_WARPS_M x TC_WARPS_N warps; warp (wm, wn) owns a (TC_BM / TC_WARPS_M) x (TC_BN / TC_WARPS_N)
// sub-tile, i.e. TC_MI x TC_NI mma tiles of 16 x 8, whose FP32 accumulators live in registers.
// The reduction advances TC_BK at a time. Each step's A and B tiles are copied by cp.async (bytes
// outside the matrix zero-filled) into one of TC_STAGES shared-memory stages, TC_STAGES - 1 steps
// ahead of the mma's, so the copies of later steps overlap the products of this one. The caller's
// loaders say where each element is in memory; the thread of each copy is one of three patterns
// below (TcKMajor16, TcKMajor, TcRowMajor), chosen by which axis of the operand is contiguous:
// 16-byte copies of 4 consecutive k's where the operand is contiguous along k and 16-byte
// aligned, 4-byte copies otherwise (operands gathered im2col-style, or contiguous along m or n).
//
// Shared memory: both tiles are stored reduction-major per row, A as [m][k], B as [n][k], each
// row TC_BK floats = TC_CPR 16-byte chunks, unpadded; chunk c of row r is stored at chunk
// c ^ ((r / TC_RPP) % TC_SWZ) of the row (an XOR swizzle; TC_RPP rows fill the 128 bytes of the 32
// banks). Then every access below is free of bank conflicts (tests/test_kernels_tensor_core.py
// counts them in the emulator, sim.bank_conflicts):
//   ldmatrix   8 rows r0..r0+7 (r0 % 8 == 0) at one chunk c: (r % TC_RPP, c ^ swizzle) takes 8
//              distinct values, 8 distinct 16-byte bank groups;
//   TcKMajor16 8 lanes (one 128-byte phase) write TC_RPP whole rows' chunks: 8 bank groups;
//   TcKMajor   a warp writes 32 consecutive floats of 32 / TC_BK rows: 32 banks;
//   TcRowMajor a warp writes 8 consecutive rows (8 bank groups) at 4 k's of distinct k % 4.
//
// Fragments: an FP32 tile read by ldmatrix.b16 gives lane l the float (l / 4, l % 4) of each 8 x 4
// block, which is the TF32 fragment order (tensor_core.cuh); the floats are then rounded with
// cvt.rna.tf32 (TC_BF16 0). For BF16 (TC_BF16 1) a fragment register holds the elements of the
// mma's k = 2t and 2t+1; the tile gives lane l (t = l % 4) the floats at k = t and k = t + 4 of
// each 8, from two 8 x 4 blocks, and pack_bf16x2 rounds them to BF16 (nearest even) into that
// register. So mma k 2t + h multiplies the tile's k = t + 4h, the same permutation of each 8 k's
// for A and for B: a reordering of the terms of the reduction, the same sum. Accumulation is
// FP32 in both.
//
// Operands stored in BF16 (the activations under precision bf16: conv2d_tc.cu's _bf16 entry
// points): cp.async moves 4, 8 or 16 bytes, not one 2-byte element, so such an operand's
// elements are loaded into registers when their step's copies are issued and stored into the
// stage, decoded to float (exact), by the loader's flush(), which tc_mainloop calls after the
// current stage's product: the loads' latency hides behind the mma's, as the cp.async's does
// (TcCopies). The stores follow the same thread patterns as the copies, so they are free of bank
// conflicts too. The shared tiles and fragments are then those of FP32 storage; the BF16
// rounding of pack_bf16x2 leaves a decoded BF16 value unchanged, so a product on BF16 storage
// is bit for bit the product on its float32 copy.
//
// The configuration (TC_BM, TC_BN, TC_BK, TC_WARPS_M, TC_WARPS_N, TC_STAGES, TC_BF16, and the
// kernels' __launch_bounds__ minimum blocks TC_MIN_BLOCKS, TC_MIN_BLOCKS_BACKWARD) is chosen per
// shape by cupycnn/ops/tiles.py and passed as -D defines; nothing here repeats it.
#ifndef CUPYCNN_TC_TILE_CUH
#define CUPYCNN_TC_TILE_CUH
#include "tensor_core.cuh"

#if !defined(TC_BM) || !defined(TC_BN) || !defined(TC_BK) || !defined(TC_WARPS_M) || \
    !defined(TC_WARPS_N) || !defined(TC_STAGES) || !defined(TC_BF16) || \
    !defined(TC_MIN_BLOCKS) || !defined(TC_MIN_BLOCKS_BACKWARD)
#error "tc_tile.cuh: compile with the TC_* defines of a configuration from cupycnn/ops/tiles.py"
#endif

#define TC_THREADS (32 * TC_WARPS_M * TC_WARPS_N)
#define TC_WARP_M (TC_BM / TC_WARPS_M)            // rows of C per warp
#define TC_WARP_N (TC_BN / TC_WARPS_N)            // columns of C per warp
#define TC_MI (TC_WARP_M / 16)                    // mma tiles per warp along M
#define TC_NI (TC_WARP_N / 8)                     // ... along N
#define TC_MMA_K (TC_BF16 ? 16 : 8)
#define TC_CPR (TC_BK / 4)                        // 16-byte chunks per shared row
#define TC_RPP (TC_CPR >= 8 ? 1 : 8 / TC_CPR)     // rows per 128 bytes (the 32 banks)
#define TC_SWZ (TC_CPR >= 8 ? 8 : TC_CPR)         // chunks the swizzle permutes

#if TC_WARP_M % 16 || TC_WARP_N % 16 || TC_BK % 16 || TC_THREADS % TC_BK || \
    TC_THREADS % TC_BM || TC_THREADS % TC_BN || (TC_BM * TC_CPR) % TC_THREADS || \
    (TC_BN * TC_CPR) % TC_THREADS || TC_STAGES < 2
#error "tc_tile.cuh: unsupported tile configuration"
#endif

// The float offset of element (row, k) in a tile (the swizzle above).
__device__ __forceinline__ int tc_at(int row, int k) {
  return row * TC_BK + ((((k >> 2) ^ ((row / TC_RPP) % TC_SWZ))) << 2) + (k & 3);
}

// One stage of shared memory: the A tile then the B tile.
struct TcStage {
  float a[TC_BM * TC_BK];
  float b[TC_BN * TC_BK];
};

// Which thread copies which element of a ROWS x TC_BK tile (rows: m for A, n for B), for an
// operand contiguous along k in 16-byte copies: thread t copies chunk TcKMajor16::chunk() (k =
// 4 chunk .. 4 chunk + 3) of rows row(0 .. LOADS - 1); consecutive threads along the row.
template <int ROWS> struct TcKMajor16 {
  static constexpr int LOADS = ROWS * TC_CPR / TC_THREADS;
  static __device__ __forceinline__ int chunk() { return threadIdx.x % TC_CPR; }
  static __device__ __forceinline__ int row(int i) {
    return threadIdx.x / TC_CPR + i * (TC_THREADS / TC_CPR); }
};

// ... contiguous along k, one float per copy: k() of rows row(0 .. LOADS - 1).
template <int ROWS> struct TcKMajor {
  static constexpr int LOADS = ROWS * TC_BK / TC_THREADS;
  static __device__ __forceinline__ int k() { return threadIdx.x % TC_BK; }
  static __device__ __forceinline__ int row(int i) {
    return threadIdx.x / TC_BK + i * (TC_THREADS / TC_BK); }
};

// The rows row0 + TcKMajor<ROWS>::row(i) (i < LOADS) of this thread in an operand of `rows` rows
// stored `stride` elements apart: `first` = the first one's offset, `step` = the offset between
// two (they are TC_THREADS / TC_BK rows apart), `count` = how many are below `rows` (row i is in
// the matrix iff i < count). A loader that keeps these three instead of each row's offset and
// comparison saves registers (conv2d_tc.cu's gradients: 2 LOADS x 8 rows); 32-bit offsets: the
// caller knows its operand's rows fit.
template <int ROWS>
__device__ __forceinline__ void tc_rows_k_major(int row0, int rows, int stride, unsigned& first,
                                                unsigned& step, int& count) {
  const int row = row0 + TcKMajor<ROWS>::row(0), apart = TC_THREADS / TC_BK;
  count = row < rows ? min(TcKMajor<ROWS>::LOADS, (rows - row + apart - 1) / apart) : 0;
  first = (unsigned)row * stride;      // unsigned: defined past the matrix, where it is unused
  step = (unsigned)apart * stride;
}

// ... contiguous along the rows (m or n), one float per copy: row() at k(0 .. LOADS - 1). Each
// group of 8 lanes takes 8 consecutive rows at one k (32 bytes of global memory, one sector), the
// 4 groups of a warp 4 k's of distinct k % 4 (so its 32 stores hit 32 banks). A thread keeps one
// row: P threads per row, thread j of them takes every P-th k from its first, which is j, shifted
// by P for the row groups after the first in its warp when P < 4 (wrapping around TC_BK).
template <int ROWS> struct TcRowMajor {
  static constexpr int P = TC_THREADS / ROWS;
  static constexpr int LOADS = TC_BK / P;
  static_assert(P >= 1 && P <= TC_BK && (P & (P - 1)) == 0, "TcRowMajor: threads per row");
  static __device__ __forceinline__ int row() {
    return threadIdx.x % 8 + 8 * (threadIdx.x / 8 / P); }
  static __device__ __forceinline__ int k(int i) {
    const int group = threadIdx.x / 8, first = group % P + (P < 4 ? P * (group / P % (4 / P)) : 0);
    return (first + P * i) % TC_BK;
  }
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
      const int row = warp_m0 + i * 16 + lane % 16;
      unsigned q[4];
      ldmatrix_x4(q, s.a + tc_at(row, kk + (lane / 16) * 4));
#if TC_BF16
      unsigned p[4];
      ldmatrix_x4(p, s.a + tc_at(row, kk + 8 + (lane / 16) * 4));
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
        ldmatrix_x4(q, s.b + tc_at(warp_n0 + (j + jj) * 8 + lane % 8, kk + (lane / 8) * 4));
        b[j + jj][0] = pack_bf16x2(__uint_as_float(q[0]), __uint_as_float(q[1]));
        b[j + jj][1] = pack_bf16x2(__uint_as_float(q[2]), __uint_as_float(q[3]));
      }
#else
      // Two n8 tiles per ldmatrix.x4: lanes 0-15 the first (floats 0-3, 4-7), 16-31 the second.
      unsigned q[4];
      ldmatrix_x4(q, s.b + tc_at(warp_n0 + (j + lane / 16) * 8 + lane % 8,
                                 kk + ((lane / 8) % 2) * 4));
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

// Copy one float of an operand to element (row, k) of a stage's tile (zero when !valid; src must
// still be a valid address then, e.g. the matrix's base).
__device__ __forceinline__ void tc_copy(float* tile, int row, int k, const float* src, bool valid) {
  cp_async_4(tile + tc_at(row, k), src, valid ? 4 : 0);
}

// Copy floats k = 4 chunk .. 4 chunk + 3 of a row: `count` (0 to 4) of them from src (16-byte
// aligned; a valid address even when count is 0), the rest zero.
__device__ __forceinline__ void tc_copy16(float* tile, int row, int chunk, const float* src,
                                          int count) {
  cp_async_16(tile + tc_at(row, 4 * chunk), src, 4 * count);
}

// The ROWS x TC_BK tile at (row0, k0) of a rows x K operand X stored [row][k] (K floats per
// row), in 16-byte copies if `vectors` (K % 4 == 0, X 16-byte aligned).
template <int ROWS>
__device__ __forceinline__ void tc_load_k_major(float* tile, const float* X, int rows, int K,
                                                int row0, int k0, bool vectors) {
  if (vectors) {
    const int k = k0 + 4 * TcKMajor16<ROWS>::chunk();
    const int count = max(0, min(4, K - k));
#pragma unroll
    for (int i = 0; i < TcKMajor16<ROWS>::LOADS; ++i) {
      const int r = TcKMajor16<ROWS>::row(i), g = row0 + r;
      const bool ok = g < rows && count > 0;
      tc_copy16(tile, r, TcKMajor16<ROWS>::chunk(), ok ? X + (long long)g * K + k : X,
                ok ? count : 0);
    }
  } else {
    const int k = TcKMajor<ROWS>::k();
#pragma unroll
    for (int i = 0; i < TcKMajor<ROWS>::LOADS; ++i) {
      const int r = TcKMajor<ROWS>::row(i), g = row0 + r;
      const bool ok = g < rows && k0 + k < K;
      tc_copy(tile, r, k, ok ? X + (long long)g * K + k0 + k : X, ok);
    }
  }
}

// ... of an operand stored [k][row] (`rows` floats per k).
template <int ROWS>
__device__ __forceinline__ void tc_load_row_major(float* tile, const float* X, int rows, int K,
                                                  int row0, int k0) {
  const int r = TcRowMajor<ROWS>::row(), g = row0 + r;
#pragma unroll
  for (int i = 0; i < TcRowMajor<ROWS>::LOADS; ++i) {
    const int k = TcRowMajor<ROWS>::k(i);
    const bool ok = g < rows && k0 + k < K;
    tc_copy(tile, r, k, ok ? X + (long long)(k0 + k) * rows + g : X, ok);
  }
}

// A thread's N single-element copies per step of one operand into a stage, by the operand's
// storage type T; copy i goes to element (row, k) of `tile` (the stage's a or b). float:
// cp.async (tc_copy), flush() does nothing. bf16: the element is loaded now and stored, decoded,
// by flush() (the header says why); the copy remembers where, as a float offset in the stage
// (the same every step, but cheaper kept than recomputed).
template <class T, int N>
struct TcCopies;

template <int N>
struct TcCopies<float, N> {
  __device__ __forceinline__ void copy(int, TcStage&, float* tile, int row, int k,
                                       const float* src, bool valid) {
    tc_copy(tile, row, k, src, valid);
  }
  __device__ __forceinline__ void flush(TcStage&) {}
};

template <int N>
struct TcCopies<bf16, N> {
  // The elements' bits, two per register (copy i in half i % 2: the loaders issue copies 0 to
  // N - 1 in order, so the even one of each pair comes first); as one bf16 per register, the
  // small tile's bf16 weight gradient (2 x 8 elements held) spilled at 4 blocks per SM.
  unsigned held[(N + 1) / 2];
  int offset[N];

  __device__ __forceinline__ void copy(int i, TcStage& s, float* tile, int row, int k,
                                       const bf16* src, bool valid) {
    const unsigned bits = valid ? src->bits : 0u;
    held[i / 2] = i % 2 ? held[i / 2] | bits << 16 : bits;
    offset[i] = (int)(tile + tc_at(row, k) - reinterpret_cast<float*>(&s));
  }
  __device__ __forceinline__ void flush(TcStage& s) {
    float* base = reinterpret_cast<float*>(&s);
#pragma unroll
    for (int i = 0; i < N; ++i)        // a bf16's float is its bits in the upper half
      base[offset[i]] = __uint_as_float(i % 2 ? held[i / 2] & 0xffff0000u : held[i / 2] << 16);
  }
};

// The epilogue with per-row sums of what it stores (a statistic folded into the product that
// produces its input: the batchnorm's sum y and sum y^2 per output channel of the forward
// convolution, conv2d_tc.cu). store(row, col, v) stores the result at (row, col) of the block's
// tile, returns whether that is inside the matrix and sets v to the value stored (as float:
// a BF16 store's rounded value). Each row's sums over the block's columns are added in double
// in a fixed order: a thread's own columns (j, then its two adjacent ones), then the 4 lanes of
// the quad and the TC_WARPS_N warps that share the row, through shared memory (the stages,
// free after the main loop) in (warp, lane) order. Then rows(row, sum, sum_sq) is called once
// for each of the TC_BM rows, by one thread. No atomics: the same bits whatever order the
// blocks and warps run in.
template <class Store, class Rows>
__device__ __forceinline__ void tc_epilogue_row_sums(const TcAcc& acc, Store& store, Rows& rows,
                                                     TcStage* stages) {
  constexpr int PARTS = TC_WARPS_N * 4;               // partial sums per row
  static_assert(PARTS * TC_BM * 2 * sizeof(double) <= TC_STAGES * sizeof(TcStage),
                "tc_epilogue_row_sums: the partial sums must fit in the stages");
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warp_m0 = (warp / TC_WARPS_N) * TC_WARP_M, warp_n0 = (warp % TC_WARPS_N) * TC_WARP_N;
  const int part = (warp % TC_WARPS_N) * 4 + lane % 4;
  double* partial = reinterpret_cast<double*>(stages);   // [PARTS][TC_BM][2]
  __syncthreads();                                      // no warp reads the stages any more
#pragma unroll
  for (int i = 0; i < TC_MI; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = warp_m0 + i * 16 + lane / 4 + 8 * h;
      double sum = 0.0, sum_sq = 0.0;
#pragma unroll
      for (int j = 0; j < TC_NI; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float v = acc[i][j][2 * h + e];
          if (store(row, warp_n0 + j * 8 + 2 * (lane % 4) + e, v)) {
            const double d = v;
            sum += d;
            sum_sq += d * d;
          }
        }
      partial[(part * TC_BM + row) * 2] = sum;
      partial[(part * TC_BM + row) * 2 + 1] = sum_sq;
    }
  __syncthreads();
  for (int row = threadIdx.x; row < TC_BM; row += TC_THREADS) {
    double sum = 0.0, sum_sq = 0.0;
    for (int p = 0; p < PARTS; ++p) {
      sum += partial[(p * TC_BM + row) * 2];
      sum_sq += partial[(p * TC_BM + row) * 2 + 1];
    }
    rows(row, sum, sum_sq);
  }
}

#endif  // CUPYCNN_TC_TILE_CUH
