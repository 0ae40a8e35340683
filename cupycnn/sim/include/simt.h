// simt.h -- cupycnn's CUDA emulator: compile CUDA C kernels with g++ and run them on the CPU.
//
// Each block's threads are user-level fibers that switch only at barriers (__syncthreads,
// __syncwarp, warp shuffles and votes). Between barriers a thread runs alone, so the order in
// which threads are started and released decides which data race (a missing barrier) shows up:
// natural order, reversed order, or a seeded random order, chosen at run time. Blocks run one at
// a time per OS thread (several OS threads when built with -fopenmp), in the same chosen order.
//
// A launch returns non-zero and leaves a message in simt_last_error() instead of hanging when
// threads wait at barriers that can never be released (a barrier in divergent code).
// Fibers switch with a dozen instructions of assembly on x86-64 and with ucontext elsewhere
// (or when SIMT_UCONTEXT is defined).
//
// Python side: cupycnn/sim/module.py writes a wrapper that includes this header, the kernel
// source and one exported launcher per kernel (SIMT_EXPORT), and builds it with g++.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <math.h>
#include <cassert>
#include <cstdarg>
#include <map>
#include <vector>
#include <tuple>
#include <utility>
#include <type_traits>
#include <algorithm>
#include <random>
#include <sys/mman.h>
#include <unistd.h>
#include <time.h>
#if defined(SIMT_UCONTEXT) || !defined(__x86_64__)
#  ifndef SIMT_UCONTEXT
#    define SIMT_UCONTEXT 1
#  endif
#  include <ucontext.h>
#endif
#ifdef _OPENMP
#  include <omp.h>
#endif

// ----------------------------------------------------------------- keywords
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Shared memory: one copy per OS thread (each OS thread runs one block at a time), shared by
// all fibers of the block being run. With one OS thread, static __shared__ variables are plain
// statics gathered in the section `simt_shared`, which the launcher fills with 0xFF bytes (a NaN
// for floats) at every block's start, as it does dynamic shared memory: a read of shared memory
// that no thread of the block wrote shows up instead of silently seeing the previous block's
// values. Under OpenMP they are thread_local and not poisoned. module.py rewrites
// `extern __shared__` (dynamic shared memory) to `extern SIMT_DYNAMIC_SHARED`.
// g++ ignores the section of a static local in a template (a function template's, or any
// function's in a class template: it must go to its instantiation's own comdat .bss section),
// so module.py also follows every one-line `__shared__ T name[...];` with
// `SIMT_SHARED_REGISTER(name)`, which records the array's address and size the first time its
// declaration runs (and poisons it then): the launcher poisons every recorded array too.
#ifdef _OPENMP
#  define __shared__ thread_local
#  define SIMT_DYNAMIC_SHARED thread_local
#else
#  define __shared__ static __attribute__((section("simt_shared")))
#  define SIMT_DYNAMIC_SHARED
extern "C" char __start_simt_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_simt_shared[] __attribute__((weak, visibility("hidden")));
#endif
#define SIMT_EMULATION 1
// __restrict__ is understood by g++ natively.

#ifndef SIMT_TLS_MODEL  // initial-exec is ~40% faster but needs GLIBC_TUNABLES=glibc.rtld.optional_static_tls=...
#  define SIMT_TLS_MODEL
#endif
#if defined(_OPENMP) || defined(SIMT_FORCE_TLS)
#  define SIMT_TLS thread_local SIMT_TLS_MODEL
#else
#  define SIMT_TLS
#endif

#ifndef SIMT_STACK_BYTES
#  define SIMT_STACK_BYTES (64 * 1024)
#endif
#ifndef SIMT_PREFETCH_BYTES     // of a parked thread's stack, fetched one thread ahead
#  define SIMT_PREFETCH_BYTES 768
#endif
#ifndef SIMT_MAX_DYN_SMEM
#  define SIMT_MAX_DYN_SMEM (64 * 1024)
#endif

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
// static (internal linkage): one TLS module-base lookup per function under -fopenmp.
// Consequence: kernels + launcher must live in ONE translation unit (the wrapper).
static SIMT_TLS uint3 threadIdx, blockIdx;
static SIMT_TLS dim3 blockDim, gridDim;
static constexpr int warpSize = 32;

// ----------------------------------------------------------- context switch
#ifndef SIMT_UCONTEXT
// simt_swap(&from_sp, to_sp): save callee-saved regs on current stack, store rsp,
// load the other rsp, pop its regs, return into it. (MXCSR/x87 CW not saved.)
asm(R"(
  .text
  .weak simt_swap
  .hidden simt_swap
  .type simt_swap,@function
simt_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .weak simt_trampoline
  .hidden simt_trampoline
  .type simt_trampoline,@function
simt_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
)");
extern "C" void simt_swap(void** save_sp, void* new_sp);
extern "C" void simt_trampoline();
#endif

namespace simt {

struct Fiber {
#ifdef SIMT_UCONTEXT
  ucontext_t uc;
#else
  void* sp = nullptr;
#endif
  char* mem = nullptr;   // lowest address (guard page)
  size_t size = 0;
  size_t color = 0;      // sp offset so that stacks don't all alias in L1
};

enum : uint8_t { RUN, WAIT_BLOCK, WAIT_WARP, DONE };

struct Config {            // process-wide knobs, set from Python
  int sched = 0;           // thread and block order: 0 natural, 1 reversed, 2 random (seeded)
  int fast = 1;            // 1: one fiber runs threads back-to-back until one blocks
  unsigned seed = 12345;
  int nthreads = 0;        // OpenMP threads (0 = default)
  int poison = 1;          // fill shared memory with 0xFF (NaN) at every block's start
};
inline Config g_cfg;

// The last launch's error, for Python to read (simt_last_error) and raise.
inline char g_errmsg[1024] = "";
__attribute__((format(printf, 1, 2))) inline void set_error(const char* fmt, ...) {
  va_list ap; va_start(ap, fmt);
  vsnprintf(g_errmsg, sizeof g_errmsg, fmt, ap);
  va_end(ap);
}

// One cp.async in flight: the source bytes as read at issue (a snapshot), where they go, and
// the commit group it belongs to (-1: not committed yet).
struct CpAsync { void* dst; uint8_t data[16]; int size; int group; };
// One warp-wide shared-memory access being gathered for the bank check: each lane's address and
// size (0: the lane did not take part).
struct BankAccess { uintptr_t addr[32]; uint8_t size[32]; uint32_t lanes; };
enum { MATRIX_WORDS = 16 };        // 32-bit words one lane contributes to a matrix collective

struct Block {
  int n = 0, nwarps = 0;
  dim3 bdim;
  void (*body)(void*) = nullptr; void* ctx = nullptr;
  std::vector<uint3> tidx;         // linear tid -> threadIdx
  std::vector<int> order;          // start order
  int next_start = 0, ndone = 0;
  std::vector<Fiber*> fib;         // fiber currently carrying thread t
  std::vector<uint8_t> st;
  std::vector<int> rq; int rhead = 0, rcount = 0;   // ready ring buffer
  std::vector<int> bwait;          // threads waiting at __syncthreads
  std::vector<uint32_t> wlive, warrive, wmask;     // per warp / per thread masks
  std::vector<uint64_t> xbuf;      // per warp: 2 x 32 exchange slots
  std::vector<uint8_t> xpar;       // per thread shuffle parity
  std::vector<uint32_t> mbuf;      // per warp: 2 x 32 lanes x MATRIX_WORDS, matrix collectives
  std::vector<uint8_t> mpar;       // per thread matrix-collective parity
  std::vector<std::vector<struct CpAsync>> cpq;   // per thread: cp.async copies in flight
  std::vector<int> cpgroups;       // per thread: groups committed so far
  std::vector<uint32_t> cpseq;     // per thread: cp.async issued so far (bank check)
  std::vector<std::map<uint32_t, struct BankAccess>> cppend;   // per warp: by cp.async number
  int bacc[2] = {0, 0}; unsigned bphase = 0;        // __syncthreads_count etc.
  std::vector<Fiber*> pool; size_t pool_next = 0;  // fibers, reused per block
  Fiber main;
  std::mt19937 rng;
  int error = 0;
  std::vector<std::pair<void*(*)(), size_t>>* dyn = nullptr;
  size_t dyn_bytes = 0;
};
static SIMT_TLS Block* g_blk = nullptr;
static SIMT_TLS int g_tid = 0;      // linear id of the emulated thread now running
inline std::vector<void*(*)()>& dyn_smem_registry() { static std::vector<void*(*)()> r; return r; }
// Static __shared__ arrays (address, bytes) recorded by SIMT_SHARED_REGISTER.
inline std::vector<std::pair<char*, size_t>>& static_smem_registry() {
  static std::vector<std::pair<char*, size_t>> r; return r; }

// ------------------------------------------------------------------ shared-memory bank check
// Off unless Python asks (sim.bank_conflicts()): for every warp-wide ldmatrix, and every
// cp.async its lanes issue as one instruction (the n-th copy of each lane of the warp), the
// number of shared-memory wavefronts the access needs on a GPU against the fewest it could need.
// Shared memory has 32 banks of 4 bytes; a warp's access is served in phases of 128 bytes (4-byte
// accesses: the 32 lanes at once; 8-byte: 16 lanes at a time; 16-byte, and each 8 x 16-byte
// matrix of an ldmatrix: 8 at a time); a phase takes as many wavefronts as the most distinct
// 4-byte words any one bank holds among its addresses. Counts: [kind][instructions, wavefronts,
// ideal wavefronts, worst phase], kind 0 ldmatrix, 1 cp.async (its shared-memory destination);
// then the cp.async copies of single lanes by size (4, 8, 16 bytes).
inline int g_bank_check = 0;
inline unsigned long long g_bank[2][4] = {};
inline unsigned long long g_copies[3] = {};

// Blocks may run on several OS threads (CUPYCNN_SIM_THREADS): the counts are atomic.
inline void bank_add(unsigned long long& c, unsigned long long n) { __atomic_fetch_add(&c, n, __ATOMIC_RELAXED); }

inline void bank_phase(int kind, const uintptr_t* addr, const uint8_t* size, int first, int count) {
  uintptr_t words[32][32]; int used[32] = {0}; int worst = 0, any = 0;
  for (int i = first; i < first + count; ++i) {
    if (!size[i]) continue;
    any = 1;
    for (uintptr_t w = addr[i] / 4; w < (addr[i] + size[i] + 3) / 4; ++w) {
      const int bank = (int)(w % 32);
      bool seen = false;
      for (int j = 0; j < used[bank]; ++j) seen |= words[bank][j] == w;
      if (!seen && used[bank] < 32) words[bank][used[bank]++] = w;
      worst = std::max(worst, used[bank]);
    }
  }
  if (!any) return;
  bank_add(g_bank[kind][1], worst); bank_add(g_bank[kind][2], 1);
  unsigned long long seen = __atomic_load_n(&g_bank[kind][3], __ATOMIC_RELAXED);
  while (seen < (unsigned long long)worst &&
         !__atomic_compare_exchange_n(&g_bank[kind][3], &seen, (unsigned long long)worst, false,
                                      __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
}

// The phases of one warp instruction's accesses, by access size.
inline void bank_phases(int kind, const BankAccess& a) {
  for (int bytes = 4; bytes <= 16; bytes *= 2) {
    BankAccess part = a;
    for (int l = 0; l < 32; ++l) if (part.size[l] != bytes) part.size[l] = 0;
    const int per_phase = 128 / bytes;
    for (int first = 0; first < 32; first += per_phase)
      bank_phase(kind, part.addr, part.size, first, per_phase);
  }
}

// A lane's cp.async: counted once every live lane of its warp has issued its copy of that number.
inline void bank_record_copy(void* dst, int size) {
  Block& b = *g_blk; const int lane = g_tid & 31, w = g_tid >> 5;
  bank_add(g_copies[size == 4 ? 0 : size == 8 ? 1 : 2], 1);
  BankAccess& a = b.cppend[w][b.cpseq[g_tid]++];
  if (!a.lanes) memset(a.size, 0, sizeof a.size);
  a.addr[lane] = (uintptr_t)dst; a.size[lane] = (uint8_t)size; a.lanes |= 1u << lane;
  if ((a.lanes & b.wlive[w]) == b.wlive[w]) {
    bank_add(g_bank[1][0], 1); bank_phases(1, a);
    b.cppend[w].erase(b.cpseq[g_tid] - 1);
  }
}

inline void bank_flush(Block& b) {
  for (auto& pending : b.cppend) {
    for (auto& kv : pending) { bank_add(g_bank[1][0], 1); bank_phases(1, kv.second); }
    pending.clear();
  }
}

[[noreturn]] inline void die(const char* m) { fprintf(stderr, "simt: %s\n", m); abort(); }

inline Fiber* new_fiber(size_t idx) {
  Fiber* f = new Fiber;
  long pg = sysconf(_SC_PAGESIZE);
  f->size = SIMT_STACK_BYTES + pg;
  void* m = mmap(nullptr, f->size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (m == MAP_FAILED) die("mmap failed");
  mprotect(m, pg, PROT_NONE);      // guard page: stack overflow -> SIGSEGV
  f->mem = (char*)m;
  f->color = (idx * 64 * 7) % 4096;
  return f;
}

inline void set_cur(int t) { g_tid = t; threadIdx = g_blk->tidx[t]; }

inline void switch_fiber(Fiber* from, Fiber* to) {
#ifdef SIMT_UCONTEXT
  swapcontext(&from->uc, &to->uc);
#else
  simt_swap(&from->sp, to->sp);
#endif
}

inline Fiber* pick_next();

inline void runner_entry(Fiber* self);

inline Fiber* pool_get(Block& b) {
  if (b.pool_next == b.pool.size()) b.pool.push_back(new_fiber(b.pool.size()));
  return b.pool[b.pool_next++];
}

inline void init_fiber(Fiber* f) {
#ifdef SIMT_UCONTEXT
  getcontext(&f->uc);
  long pg = sysconf(_SC_PAGESIZE);
  f->uc.uc_stack.ss_sp = f->mem + pg;
  f->uc.uc_stack.ss_size = f->size - pg - f->color;
  f->uc.uc_link = nullptr;
  uintptr_t p = (uintptr_t)f;
  makecontext(&f->uc, (void (*)())+[](unsigned lo, unsigned hi) {
    runner_entry((Fiber*)(((uintptr_t)hi << 32) | lo)); }, 2, (unsigned)p, (unsigned)(p >> 32));
#else
  uintptr_t top = ((uintptr_t)(f->mem + f->size) - f->color) & ~(uintptr_t)15;
  void** sp = (void**)(top - 72);            // after 6 pops + ret: rsp = top-16
  sp[0] = sp[1] = sp[4] = sp[5] = nullptr;   // r15 r14 rbx rbp
  sp[2] = (void*)&runner_entry;              // r13 = function
  sp[3] = (void*)f;                          // r12 = argument
  sp[6] = (void*)&simt_trampoline;           // return address
  f->sp = sp;
#endif
}

inline void push_ready(Block& b, int t) {
  int i = b.rhead + b.rcount; if (i >= b.n) i -= b.n;
  b.rq[i] = t; b.rcount++; b.st[t] = RUN;
}

// Release a set of waiting threads, in the configured order.
inline void release(Block& b, int* ts, int k) {
  if (g_cfg.sched == 1) std::sort(ts, ts + k, [](int a, int c) { return a > c; });
  else if (g_cfg.sched == 2) std::shuffle(ts, ts + k, b.rng);
  for (int i = 0; i < k; ++i) push_ready(b, ts[i]);
}

inline void check_block(Block& b) {
  int k = (int)b.bwait.size();
  if (k && k + b.ndone == b.n) {
    b.bphase++; b.bacc[b.bphase & 1] = 0;
    release(b, b.bwait.data(), k);
    b.bwait.clear();
  }
}

// Release lanes of warp w whose (mask & live lanes) have all arrived.
inline void check_warp(Block& b, int w, uint32_t hint_mask) {
  uint32_t arr = b.warrive[w], live = b.wlive[w];
  if (!arr) return;
  if (hint_mask) { uint32_t m = hint_mask & live; if ((arr & m) != m) return; }
  uint32_t rel = 0;
  for (uint32_t a = arr; a; a &= a - 1) {
    int l = __builtin_ctz(a);
    uint32_t m = b.wmask[w * 32 + l] & live;
    if ((arr & m) == m) rel |= 1u << l;
  }
  if (!rel) return;
  b.warrive[w] &= ~rel;
  int ts[32], k = 0;
  for (uint32_t a = rel; a; a &= a - 1) ts[k++] = w * 32 + __builtin_ctz(a);
  release(b, ts, k);
}

inline void report_deadlock(Block& b) {
  int nb = 0, nw = 0, first_b = -1, first_w = -1;
  for (int t = 0; t < b.n; ++t) {
    if (b.st[t] == WAIT_BLOCK) { nb++; if (first_b < 0) first_b = t; }
    if (b.st[t] == WAIT_WARP) { nw++; if (first_w < 0) first_w = t; }
  }
  set_error("deadlock in block (%u,%u,%u): %d threads finished, %d wait at __syncthreads "
            "(first: thread %d), %d wait at a warp barrier or shuffle (first: thread %d); "
            "a barrier inside divergent code can never be released",
            blockIdx.x, blockIdx.y, blockIdx.z, b.ndone, nb, first_b, nw, first_w);
}

inline Fiber* pick_next() {
  Block& b = *g_blk;
  if (b.rcount) {
    int t = b.rq[b.rhead]; if (++b.rhead == b.n) b.rhead = 0; b.rcount--;
#if !defined(SIMT_UCONTEXT) && SIMT_PREFETCH_BYTES > 0
    if (b.rcount) {   // the next thread's stack top (saved registers, its frame) into cache
      const char* sp = (const char*)b.fib[b.rq[b.rhead]]->sp;
      for (int i = 0; i < SIMT_PREFETCH_BYTES; i += 64) __builtin_prefetch(sp + i);
    }
#endif
    return b.fib[t];
  }
  if (b.next_start < b.n) { Fiber* f = pool_get(b); init_fiber(f); return f; }
  if (b.ndone != b.n) { report_deadlock(b); b.error = 1; }
  return &b.main;
}

// Current thread blocks (its state is already WAIT_*): run something else.
inline void yield_thread() {
  Block& b = *g_blk;
  int me = g_tid;
  Fiber* self = b.fib[me];
  Fiber* nx = pick_next();
  if (nx != self) switch_fiber(self, nx);
  set_cur(me);
}

inline void runner_entry(Fiber* self) {
  Block& b = *g_blk;                 // a runner never leaves its block
  while (b.next_start < b.n) {
    int t = b.order[b.next_start++];
    b.fib[t] = self; b.st[t] = RUN;
    g_tid = t; threadIdx = b.tidx[t];
    b.body(b.ctx);
    // thread exit (inline fast path: nobody waiting -> no release checks)
    b.st[t] = DONE; b.ndone++;
    int w = t >> 5;
    b.wlive[w] &= ~(1u << (t & 31));
    if (b.warrive[w]) check_warp(b, w, 0);
    if (!b.bwait.empty()) check_block(b);
    if (!g_cfg.fast) break;          // "slow" mode: one fiber per thread
  }
  switch_fiber(self, pick_next());
  die("finished runner resumed");
}

inline void block_barrier() {
  Block& b = *g_blk; int me = g_tid;
  b.st[me] = WAIT_BLOCK; b.bwait.push_back(me);
  check_block(b);
  yield_thread();
}

inline void warp_barrier(uint32_t mask) {
  Block& b = *g_blk; int me = g_tid, w = me >> 5; uint32_t bit = 1u << (me & 31);
  b.st[me] = WAIT_WARP; b.wmask[me] = mask | bit; b.warrive[w] |= bit;
  check_warp(b, w, mask | bit);
  yield_thread();
}

// Warp exchange: write own slot, warp barrier, read source lane's slot.
// Double-buffered by a per-thread parity so one barrier per exchange suffices.
template <class T> inline T exchange(unsigned mask, T v, int src) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle type");
  Block& b = *g_blk; int me = g_tid, lane = me & 31, w = me >> 5;
  uint64_t* buf = &b.xbuf[(size_t)(w * 2 + (b.xpar[me] ^= 1)) * 32];
  uint64_t bits = 0; memcpy(&bits, &v, sizeof(T)); buf[lane] = bits;
  warp_barrier(mask);
  T r; memcpy(&r, &buf[src], sizeof(T));
  return r;
}
inline uint32_t vote(unsigned mask, int pred) {     // returns ballot over mask & live
  Block& b = *g_blk; int me = g_tid, w = me >> 5;
  uint64_t* buf = &b.xbuf[(size_t)(w * 2 + (b.xpar[me] ^= 1)) * 32];
  buf[me & 31] = pred != 0;
  warp_barrier(mask);
  uint32_t m = mask & (b.wlive[w] | (1u << (me & 31))), r = 0;
  for (uint32_t a = m; a; a &= a - 1) { int l = __builtin_ctz(a); if (buf[l]) r |= 1u << l; }
  return r;
}
inline int block_reduce_count(int pred) {
  Block& b = *g_blk;
  b.bacc[b.bphase & 1] += pred != 0;
  block_barrier();
  return b.bacc[(b.bphase - 1) & 1];
}

template <class T> inline T* opaque_address(T* p) { asm("" : "+r"(p)); return p; }
inline Block& tls_block() { static thread_local Block* tb = new Block; return *tb; }
template <class F> void thunk(void* p) { (*(F*)p)(); }

// Run a whole grid. body() runs one emulated thread (reads threadIdx etc.).
__attribute__((noinline)) inline int launch(dim3 grid, dim3 block, size_t shmem,
                                             void (*body_fn)(void*), void* body_ctx) {
  long nthr = (long)block.x * block.y * block.z;
  long nblk = (long)grid.x * grid.y * grid.z;
  g_errmsg[0] = 0;
  if (nthr < 1 || nthr > 1024) { set_error("block of %ld threads: CUDA allows 1 to 1024", nthr); return 2; }
  if (grid.y > 65535 || grid.z > 65535 || nblk < 1) {
    set_error("grid (%u,%u,%u): CUDA allows x >= 1 and y, z in 1..65535", grid.x, grid.y, grid.z); return 2; }
  if (shmem > SIMT_MAX_DYN_SMEM) {
    set_error("dynamic shared memory of %zu bytes is over the emulator's %d", shmem, SIMT_MAX_DYN_SMEM); return 3; }
  // Block order follows the thread order: natural, reversed, or one seeded permutation.
  std::vector<long> block_order;
  if (g_cfg.sched != 0) {
    block_order.resize(nblk);
    for (long i = 0; i < nblk; ++i) block_order[i] = g_cfg.sched == 1 ? nblk - 1 - i : i;
    if (g_cfg.sched == 2) { std::mt19937 r(g_cfg.seed ^ 0x9e3779b9u); std::shuffle(block_order.begin(), block_order.end(), r); }
  }
  int err = 0;
#ifdef _OPENMP
  int nt = g_cfg.nthreads > 0 ? g_cfg.nthreads : omp_get_max_threads();
  // No more threads than blocks: one with nothing to run would still have to be scheduled
  // before the launch can end (a one-block launch on a busy machine waited 18-38 ms for it).
  if (nt > nblk) nt = (int)nblk;
#pragma omp parallel num_threads(nt) reduction(| : err)
#endif
  {
    Block& b = tls_block();
    g_blk = &b;
    blockDim = block; gridDim = grid;
    if (b.n != nthr || b.bdim.x != block.x || b.bdim.y != block.y) {
      b.n = (int)nthr; b.bdim = block; b.nwarps = (b.n + 31) / 32;
      b.tidx.resize(b.n);
      for (int t = 0; t < b.n; ++t)
        b.tidx[t] = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
      b.order.resize(b.n); b.fib.resize(b.n); b.st.resize(b.n); b.rq.resize(b.n);
      b.wlive.resize(b.nwarps); b.warrive.resize(b.nwarps); b.wmask.resize(b.n);
      b.xbuf.assign((size_t)b.nwarps * 64, 0); b.xpar.resize(b.n);
      b.mbuf.assign((size_t)b.nwarps * 64 * MATRIX_WORDS, 0); b.mpar.resize(b.n);
      b.cpq.resize(b.n); b.cpgroups.resize(b.n); b.cpseq.resize(b.n); b.cppend.resize(b.nwarps);
      b.bwait.reserve(b.n);
    }
    b.body = body_fn; b.ctx = body_ctx;
#ifdef _OPENMP
    b.rng.seed(g_cfg.seed + 7919u * omp_get_thread_num());
#pragma omp for schedule(dynamic, 1)
#else
    b.rng.seed(g_cfg.seed);
#endif
    for (long i = 0; i < nblk; ++i) {
      if (err) continue;
      const long bid = block_order.empty() ? i : block_order[i];
      blockIdx = uint3{(unsigned)(bid % grid.x), (unsigned)((bid / grid.x) % grid.y),
                       (unsigned)(bid / ((long)grid.x * grid.y))};
      for (int t = 0; t < b.n; ++t) b.order[t] = t;
      if (g_cfg.sched == 1) std::reverse(b.order.begin(), b.order.end());
      if (g_cfg.sched == 2) std::shuffle(b.order.begin(), b.order.end(), b.rng);
      b.next_start = b.ndone = b.rhead = b.rcount = 0; b.pool_next = 0; b.error = 0;
      b.bwait.clear(); b.bphase = 0; b.bacc[0] = b.bacc[1] = 0;
      for (int w = 0; w < b.nwarps; ++w) {
        int lanes = std::min(32, b.n - 32 * w);
        b.wlive[w] = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1); b.warrive[w] = 0;
      }
      std::fill(b.xpar.begin(), b.xpar.end(), 0);
      std::fill(b.mpar.begin(), b.mpar.end(), 0);
      for (auto& q : b.cpq) q.clear();      // copies never waited for die with their thread
      std::fill(b.cpgroups.begin(), b.cpgroups.end(), 0);
      std::fill(b.cpseq.begin(), b.cpseq.end(), 0);
      if (g_cfg.poison) {
        if (shmem) for (auto fn : dyn_smem_registry()) memset(fn(), 0xff, shmem);
#ifndef _OPENMP
        if (__start_simt_shared) memset(__start_simt_shared, 0xff, __stop_simt_shared - __start_simt_shared);
        for (auto& a : static_smem_registry()) memset(a.first, 0xff, a.second);
#endif
      }
      switch_fiber(&b.main, pick_next());
      err |= b.error;
      bank_flush(b);             // copies of warps whose lanes did not all issue them
    }
  }
  fflush(stdout);   // kernel printf appears before Python prints anything after the launch
  return err;
}

// ---- kernel-signature glue: args[i] points at the i-th parameter value (cuLaunchKernel style)
template <class... A, size_t... I>
int launch_kernel_impl(void (*k)(A...), const unsigned* g, const unsigned* bl, size_t shmem,
                       void** args, std::index_sequence<I...>) {
  std::tuple<std::decay_t<A>...> tup{*static_cast<std::decay_t<A>*>(args[I])...};
  auto body = [&] { k(std::get<I>(tup)...); };
  return launch(dim3(g[0], g[1], g[2]), dim3(bl[0], bl[1], bl[2]), shmem,
                &thunk<decltype(body)>, &body);
}
template <class... A>
int launch_kernel(void (*k)(A...), const unsigned* g, const unsigned* bl, size_t shmem, void** args) {
  return launch_kernel_impl(k, g, bl, shmem, args, std::index_sequence_for<A...>{});
}
// What Python needs to check a launch's arguments against the kernel's parameters (mirrored by
// _ParamInfo in module.py). kind of the value, or of the pointee for a pointer: 1 floating point,
// 2 signed integer, 3 unsigned integer (bool too), 4 anything else; elem: the pointee's size;
// writable: a pointer to non-const.
struct ParamInfo { uint64_t size; int32_t is_pointer, kind, elem, writable; };
template <class U> constexpr int kind_of() {
  return std::is_floating_point<U>::value ? 1
       : std::is_integral<U>::value ? (std::is_signed<U>::value ? 2 : 3) : 4;
}
template <class P> constexpr ParamInfo param_info_of() {
  using T = std::decay_t<P>;
  if constexpr (std::is_pointer<T>::value) {
    using E = std::remove_pointer_t<T>;
    using U = std::remove_cv_t<E>;
    if constexpr (std::is_void<U>::value) return ParamInfo{sizeof(T), 1, 4, 1, !std::is_const<E>::value};
    else return ParamInfo{sizeof(T), 1, kind_of<U>(), (int32_t)sizeof(U), !std::is_const<E>::value};
  } else {
    return ParamInfo{sizeof(T), 0, kind_of<T>(), (int32_t)sizeof(T), 0};
  }
}
template <class... A> int param_info(void (*)(A...), ParamInfo* out) {
  ParamInfo s[] = {param_info_of<A>()..., ParamInfo{}};
  if (out) for (size_t i = 0; i < sizeof...(A); ++i) out[i] = s[i];
  return (int)sizeof...(A);
}
struct DynSmemReg { DynSmemReg(void* (*f)()) { dyn_smem_registry().push_back(f); } };
// The first run of a static __shared__ array's declaration (in the block then running, before
// any thread of it can have written the array): record it, and poison it like the others.
inline bool register_static_shared(void* p, size_t bytes) {
  static_smem_registry().emplace_back((char*)p, bytes);
  if (g_cfg.poison) memset(p, 0xff, bytes);
  return true;
}
} // namespace simt

// Wrapper-side macros
#define SIMT_EXPORT(cname, ...)                                                              \
  extern "C" __attribute__((visibility("default"))) int simt_launch_##cname(                \
      const unsigned* g, const unsigned* b, size_t shmem, void** args) {                     \
    return simt::launch_kernel(&__VA_ARGS__, g, b, shmem, args); }                           \
  extern "C" __attribute__((visibility("default"))) int simt_params_##cname(simt::ParamInfo* p) { \
    return simt::param_info(&__VA_ARGS__, p); }
#define SIMT_CAT_(a, b) a##b
#define SIMT_CAT(a, b) SIMT_CAT_(a, b)
// A static __shared__ variable inside a function (module.py's rewrite): under OpenMP its storage
// is thread_local and `name` a reference to it, its address taken once per emulated thread
// through an empty asm (g++ would otherwise repeat the TLS lookup, a call, at every access);
// on one OS thread, the variable itself.
#ifdef _OPENMP
#  define SIMT_SHARED_NAME(name) simt_tls_##name
#  define SIMT_SHARED_ALIAS(name) auto& name = *simt::opaque_address(&simt_tls_##name);
#else
#  define SIMT_SHARED_NAME(name) name
#  define SIMT_SHARED_ALIAS(name)
#endif
#ifdef _OPENMP
#  define SIMT_SHARED_REGISTER(name)
#else
#  define SIMT_SHARED_REGISTER(name)                                                         \
  static const bool SIMT_CAT(simt_shared_registered_, __COUNTER__) =                         \
      simt::register_static_shared((void*)&(name), sizeof(name));
#endif
// Define storage for `extern __shared__ T name[];` (all such arrays alias in CUDA; here
// each name gets its own buffer, per OS thread).
#define SIMT_DYN_SMEM(T, name)                                                               \
  alignas(16) SIMT_DYNAMIC_SHARED T name[SIMT_MAX_DYN_SMEM / sizeof(T)];                     \
  static simt::DynSmemReg simt_reg_##name(+[]() -> void* { return (void*)name; });
#define SIMT_CONFIG_EXPORT                                                                   \
  extern "C" __attribute__((visibility("default"))) void simt_set_config(                   \
      int sched, int fast, unsigned seed, int nthreads, int poison) {                        \
    simt::g_cfg = simt::Config{sched, fast, seed, nthreads, poison}; }                       \
  extern "C" __attribute__((visibility("default"))) const char* simt_last_error() {         \
    return simt::g_errmsg; }                                                                 \
  extern "C" __attribute__((visibility("default"))) void simt_bank_counts(                  \
      int enable, unsigned long long* out) {                                                 \
    simt::g_bank_check = enable;                                                             \
    if (out) { memcpy(out, simt::g_bank, sizeof simt::g_bank);                                \
               memcpy(out + 8, simt::g_copies, sizeof simt::g_copies);                         \
               memset(simt::g_bank, 0, sizeof simt::g_bank);                                   \
               memset(simt::g_copies, 0, sizeof simt::g_copies); } }

// ----------------------------------------------------------------- intrinsics
inline void __syncthreads() { simt::block_barrier(); }
inline int __syncthreads_count(int p) { return simt::block_reduce_count(p); }
inline int __syncthreads_and(int p) { return simt::block_reduce_count(p) == simt::g_blk->n - simt::g_blk->ndone; }
inline int __syncthreads_or(int p) { return simt::block_reduce_count(p) != 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) { simt::warp_barrier(mask); }
inline unsigned __activemask() { return simt::g_blk->wlive[simt::g_tid >> 5]; }
template <class T> inline T __shfl_sync(unsigned m, T v, int src, int w = 32) {
  int lane = simt::g_tid & 31; return simt::exchange(m, v, (lane & ~(w - 1)) + (src & (w - 1))); }
template <class T> inline T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32) {
  int lane = simt::g_tid & 31; return simt::exchange(m, v, (int)((lane & (w - 1)) + d) < w ? lane + (int)d : lane); }
template <class T> inline T __shfl_up_sync(unsigned m, T v, unsigned d, int w = 32) {
  int lane = simt::g_tid & 31; return simt::exchange(m, v, (lane & (w - 1)) >= (int)d ? lane - (int)d : lane); }
template <class T> inline T __shfl_xor_sync(unsigned m, T v, int x, int w = 32) {
  int lane = simt::g_tid & 31, s = lane ^ x; return simt::exchange(m, v, s < ((lane / w) + 1) * w ? s : lane); }
inline unsigned __ballot_sync(unsigned m, int p) { return simt::vote(m, p); }
inline int __any_sync(unsigned m, int p) { return simt::vote(m, p) != 0; }
inline int __all_sync(unsigned m, int p) {
  unsigned live = m & simt::g_blk->wlive[simt::g_tid >> 5]; return (simt::vote(m, p) & live) == live; }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <class T> inline T __ldg(const T* p) { return *p; }
#if defined(__x86_64__)
inline long long clock64() { return (long long)__builtin_ia32_rdtsc(); }
#else
inline long long clock64() { timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }
#endif
inline void __nanosleep(unsigned) {}

// atomics: real atomics (blocks may run on several OS threads)
#define SIMT_IATOMIC(T)                                                                      \
  inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }      \
  inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }      \
  inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }      \
  inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }        \
  inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }      \
  inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }    \
  inline T atomicCAS(T* p, T c, T v) {                                                       \
    __atomic_compare_exchange_n(p, &c, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); return c; } \
  inline T atomicMax(T* p, T v) { T o = *p; while (o < v && !__atomic_compare_exchange_n(p, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} return o; } \
  inline T atomicMin(T* p, T v) { T o = *p; while (o > v && !__atomic_compare_exchange_n(p, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} return o; }
SIMT_IATOMIC(int) SIMT_IATOMIC(unsigned) SIMT_IATOMIC(unsigned long long)
#define SIMT_FATOMIC(T, U)                                                                   \
  inline T atomicAdd(T* p, T v) {                                                           \
    U o = __atomic_load_n((U*)p, __ATOMIC_RELAXED), n; T f;                                 \
    do { memcpy(&f, &o, sizeof f); f += v; memcpy(&n, &f, sizeof n); }                      \
    while (!__atomic_compare_exchange_n((U*)p, &o, n, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)); \
    memcpy(&f, &o, sizeof f); return f; }                                                   \
  inline T atomicExch(T* p, T v) { U n; memcpy(&n, &v, sizeof n); n = __atomic_exchange_n((U*)p, n, __ATOMIC_RELAXED); memcpy(&v, &n, sizeof n); return v; }
SIMT_FATOMIC(float, uint32_t) SIMT_FATOMIC(double, uint64_t)

// math / bit intrinsics (precision of the __fast variants is NOT emulated)
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return fminf(fmaxf(x, 0.f), 1.f); }
// The builds contract a * b + c into an FMA (-ffp-contract=fast, as nvcc's default
// --fmad=true); __fmul_rn and __fadd_rn promise a rounding of their own, never fused: their
// product leaves and their addends enter through an empty asm that holds the value in a
// register, which g++ cannot see through, so it has nothing to fuse.
#if defined(__x86_64__)
#  define SIMT_OPAQUE(v) asm("" : "+x"(v))
#elif defined(__aarch64__)
#  define SIMT_OPAQUE(v) asm("" : "+w"(v))
#else
#  define SIMT_OPAQUE(v) asm("" : "+m"(v))
#endif
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { SIMT_OPAQUE(a); SIMT_OPAQUE(b); return a + b; }
inline float __fmul_rn(float a, float b) { float p = a * b; SIMT_OPAQUE(p); return p; }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
inline int __float2int_rn(float f) { return (int)nearbyintf(f); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) { x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2); x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  return __builtin_bswap32(x); }
#define SIMT_MINMAX(T)                                                                       \
  inline T min(T a, T b) { return a < b ? a : b; } inline T max(T a, T b) { return a > b ? a : b; }
SIMT_MINMAX(int) SIMT_MINMAX(unsigned) SIMT_MINMAX(long long) SIMT_MINMAX(unsigned long long)
inline float min(float a, float b) { return fminf(a, b); } inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); } inline double max(double a, double b) { return fmax(a, b); }

// a few vector types
#define SIMT_VEC(T, N2, N4)                                                                  \
  struct __attribute__((aligned(2 * sizeof(T)))) N2 { T x, y; };                             \
  struct __attribute__((aligned(4 * sizeof(T)))) N4 { T x, y, z, w; };                       \
  inline N2 make_##N2(T x, T y) { return N2{x, y}; }                                         \
  inline N4 make_##N4(T x, T y, T z, T w) { return N4{x, y, z, w}; }
SIMT_VEC(float, float2, float4) SIMT_VEC(int, int2, int4) SIMT_VEC(double, double2, double4)
SIMT_VEC(unsigned, uint2, uint4)
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }
inline dim3 make_dim3(unsigned x, unsigned y, unsigned z) { return dim3(x, y, z); }

// ------------------------------------------------------------------ matrix instructions
// The warp-level matrix and copy instructions of sm_80, with the PTX ISA's semantics, for the
// wrappers in kernels/tensor_core.cuh (which use inline PTX on a GPU and these on the CPU):
//
//   simt_mma_m16n8k8_tf32   mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
//   simt_mma_m16n8k16_bf16  mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
//   simt_ldmatrix           ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16
//   simt_cp_async           cp.async.{ca,cg}.shared.global [dst], [src], size, src_size
//   simt_cp_async_commit    cp.async.commit_group
//   simt_cp_async_wait      cp.async.wait_group N
//   simt_cvt_rna_tf32       cvt.rna.tf32.f32
//   simt_cvt_rn_bf16        cvt.rn.bf16.f32
//
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k8" / "mma.m16n8k16"): in lane l, with
// g = l / 4 (the group) and t = l % 4 (the thread in the group),
//   tf32 A 16x8, a[r] (r < 4):       A[g + 8 (r % 2)][t + 4 (r / 2)]
//   tf32 B 8x8,  b[r] (r < 2):       B[t + 4 r][g]
//   bf16 A 16x16, a[r] holds 2:      A[g + 8 (r % 2)][2 t + 8 (r / 2) + h]   h = 0 low half, 1 high
//   bf16 B 16x8,  b[r] holds 2:      B[2 t + 8 r + h][g]
//   C, D 16x8 (f32), c[r] (r < 4):   C[g + 8 (r / 2)][2 t + r % 2]
// D = A B + C. The emulator forms each product exactly, adds them and C in double and rounds the
// sum once to float (PTX leaves the order and internal precision of the accumulation to the
// hardware, so a GPU may differ in the last bits). A tf32 operand's low 13 bits are ignored, as
// the hardware ignores them; cvt.rna.tf32.f32 makes a proper tf32 first.
//
// A matrix collective is a barrier of the whole warp (all 32 lanes, converged, as `.aligned`
// requires; a missing lane is an error): each lane publishes its fragment or address, then
// computes its own part of the result from everyone's.
//
// cp.async is modelled so that what a real GPU leaves to timing is deterministic and visible:
// at issue the source bytes are read (snapshotted) and the destination is filled with 0xFF
// (NaN for floats); the bytes land only when the issuing thread's cp.async.wait_group releases
// their group. A thread that reads the destination before its wait reads NaN; another thread
// that reads it without a __syncthreads() after the wait reads NaN or stale data in some thread
// order. Bytes past src_size are zero-filled (the out-of-bounds idiom). Copies still in flight
// when a thread exits are dropped.
namespace simt {

inline void fault(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline void fault(const char* fmt, ...) {   // an error in a kernel: the launch fails with it
  Block& b = *g_blk;
  if (!b.error) {
    char m[700]; va_list ap; va_start(ap, fmt); vsnprintf(m, sizeof m, fmt, ap); va_end(ap);
    set_error("thread %d of block (%u,%u,%u): %s", g_tid, blockIdx.x, blockIdx.y, blockIdx.z, m);
  }
  b.error = 1;
}

// Is [p, p + bytes) in this block's shared memory? (Only known when blocks run on one OS thread.)
// Static __shared__ arrays are in the section simt_shared or recorded by SIMT_SHARED_REGISTER
// (those of templates), dynamic ones in their registered buffers; NumPy arrays (the heap),
// __device__ globals and locals (a fiber's stack) are not.
inline bool in_shared(const void* p, size_t bytes) {
#ifdef _OPENMP
  (void)p; (void)bytes; return true;
#else
  const char* c = (const char*)p;
  if (__start_simt_shared && c >= __start_simt_shared && c + bytes <= __stop_simt_shared) return true;
  for (auto& a : static_smem_registry())
    if (c >= a.first && c + bytes <= a.first + a.second) return true;
  for (auto fn : dyn_smem_registry()) {
    const char* d = (const char*)fn();
    if (c >= d && c + bytes <= d + SIMT_MAX_DYN_SMEM) return true;
  }
  return false;
#endif
}

// Publish `words` 32-bit words of this lane, wait for the whole warp, return the warp's table
// (lane l's words at [l * MATRIX_WORDS]). Double-buffered like exchange().
inline const uint32_t* warp_publish(const uint32_t* mine, int words, const char* what) {
  Block& b = *g_blk; int me = g_tid, lane = me & 31, w = me >> 5;
  uint32_t* table = &b.mbuf[(size_t)(w * 2 + (b.mpar[me] ^= 1)) * 32 * MATRIX_WORDS];
  memcpy(&table[lane * MATRIX_WORDS], mine, words * sizeof(uint32_t));
  if (b.wlive[w] != 0xffffffffu)
    fault("%s needs all 32 lanes of warp %d, but lanes 0x%08x have exited or the warp is partial",
          what, w, ~b.wlive[w]);
  warp_barrier(0xffffffffu);
  return table;
}

inline float bits_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
inline uint32_t float_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// cvt.rna.tf32.f32: round to 10 fraction bits, ties away from zero; the result is a float whose
// low 13 bits are 0. NaN stays NaN; a value that rounds past FLT_MAX becomes infinity.
inline float cvt_rna_tf32(float x) {
  uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return x;            // NaN
  return bits_float((u + 0x1000u) & 0xffffe000u);           // sign-magnitude: + half, truncate
}
// cvt.rn.bf16.f32: round to nearest, ties to even; NaN becomes the canonical 0x7fff.
inline uint16_t cvt_rn_bf16(float x) {
  uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// D = A B + C for one warp; kind 0: m16n8k8 tf32, kind 1: m16n8k16 bf16.
inline void mma_sync(int kind, float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  const uint32_t* tab = warp_publish(mine, 6, kind ? "mma.sync.m16n8k16.bf16" : "mma.sync.m16n8k8.tf32");
  const int lane = g_tid & 31, g = lane / 4, t = lane % 4;
  const int K = kind ? 16 : 8;
  // A[row][k] and B[k][col] as doubles, read from the lane and register that hold them.
  auto A = [&](int row, int k) -> double {
    if (kind == 0) {
      uint32_t u = tab[((row % 8) * 4 + k % 4) * MATRIX_WORDS + (row / 8) + 2 * (k / 4)];
      return bits_float(u & 0xffffe000u);
    }
    uint32_t u = tab[((row % 8) * 4 + (k % 8) / 2) * MATRIX_WORDS + (row / 8) + 2 * (k / 8)];
    return bits_float(((k & 1) ? u >> 16 : u & 0xffffu) << 16);
  };
  auto B = [&](int k, int col) -> double {
    if (kind == 0) return bits_float(tab[(col * 4 + k % 4) * MATRIX_WORDS + 4 + k / 4] & 0xffffe000u);
    uint32_t u = tab[(col * 4 + (k % 8) / 2) * MATRIX_WORDS + 4 + k / 8];
    return bits_float(((k & 1) ? u >> 16 : u & 0xffffu) << 16);
  };
  float out[4];
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r / 2), col = 2 * t + r % 2;
    double sum = c[r];
    for (int k = 0; k < K; ++k) sum += A(row, k) * B(k, col);   // exact products
    out[r] = (float)sum;
  }
  for (int r = 0; r < 4; ++r) d[r] = out[r];
}

// ldmatrix.sync.aligned.m8n8.x{count}{.trans}.shared.b16: lanes 8 i .. 8 i + 7 give the row
// addresses (16 bytes each, 16-byte aligned, in shared memory) of matrix i; lane l receives in
// r[i] the two 16-bit elements (row l / 4, columns 2 (l % 4), +1) of matrix i, or with .trans
// those of its transpose: (rows 2 (l % 4), +1, column l / 4).
inline void ldmatrix(uint32_t* r, int count, bool trans, const void* row_address) {
  uint64_t p = (uint64_t)(uintptr_t)row_address;
  uint32_t mine[2] = {(uint32_t)p, (uint32_t)(p >> 32)};
  const int lane = g_tid & 31;
  if (lane < 8 * count) {
    if (p % 16) fault("ldmatrix: row address %p (lane %d) is not 16-byte aligned", row_address, lane);
    else if (!in_shared(row_address, 16))
      fault("ldmatrix: row address %p (lane %d) is not in shared memory", row_address, lane);
  }
  const uint32_t* tab = warp_publish(mine, 2, "ldmatrix");
  auto row_ptr = [&](int l) {
    return (const uint16_t*)(uintptr_t)((uint64_t)tab[l * MATRIX_WORDS] | ((uint64_t)tab[l * MATRIX_WORDS + 1] << 32));
  };
  if (g_blk->error) { for (int i = 0; i < count; ++i) r[i] = 0; return; }
  if (g_bank_check && lane == 0) {        // one lane counts the warp's instruction
    bank_add(g_bank[0][0], 1);
    for (int i = 0; i < count; ++i) {      // each matrix's 8 rows are one phase
      BankAccess a; memset(a.size, 0, sizeof a.size); a.lanes = 0xffu;
      for (int l = 0; l < 8; ++l) { a.addr[l] = (uintptr_t)row_ptr(8 * i + l); a.size[l] = 16; }
      bank_phases(0, a);
    }
  }
  for (int i = 0; i < count; ++i) {
    uint16_t e[2];
    for (int h = 0; h < 2; ++h)
      e[h] = trans ? row_ptr(8 * i + 2 * (lane % 4) + h)[lane / 4]
                   : row_ptr(8 * i + lane / 4)[2 * (lane % 4) + h];
    r[i] = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
  }
}

// cp.async.{ca,cg}.shared.global [dst], [src], size, src_size: size 4, 8 or 16 bytes (cg: 16
// only), both addresses aligned to size, src_size <= size bytes read, the rest zero-filled.
inline void cp_async(void* dst, const void* src, int size, int src_size, bool cg) {
  if (!(size == 4 || size == 8 || size == 16) || (cg && size != 16)) {
    fault("cp.async.%s: copy size %d (ca: 4, 8 or 16; cg: 16)", cg ? "cg" : "ca", size); return; }
  if ((uintptr_t)dst % size || (uintptr_t)src % size) {
    fault("cp.async: addresses %p <- %p are not aligned to the %d-byte copy", dst, src, size); return; }
  if (src_size < 0 || src_size > size) { fault("cp.async: src_size %d of a %d-byte copy", src_size, size); return; }
  if (!in_shared(dst, size)) { fault("cp.async: destination %p is not in shared memory", dst); return; }
  CpAsync c; c.dst = dst; c.size = size; c.group = -1;
  memset(c.data, 0, sizeof c.data);
  if (src_size) memcpy(c.data, src, src_size);
  memset(dst, 0xff, size);                      // the destination is undefined until the wait
  g_blk->cpq[g_tid].push_back(c);
  if (g_bank_check) bank_record_copy(dst, size);
}
inline void cp_async_commit() {
  int& groups = g_blk->cpgroups[g_tid];
  for (auto& c : g_blk->cpq[g_tid]) if (c.group < 0) c.group = groups;
  ++groups;                                     // an empty group is a group too, as in PTX
}
// cp.async.wait_group n: complete every committed group but the n most recent.
inline void cp_async_wait(int n) {
  auto& q = g_blk->cpq[g_tid];
  const int oldest_kept = g_blk->cpgroups[g_tid] - n;
  size_t kept = 0;
  for (size_t i = 0; i < q.size(); ++i) {
    if (q[i].group >= 0 && q[i].group < oldest_kept) memcpy(q[i].dst, q[i].data, q[i].size);
    else q[kept++] = q[i];
  }
  q.resize(kept);
}
} // namespace simt

inline void simt_mma_m16n8k8_tf32(float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  simt::mma_sync(0, d, a, b, c); }
inline void simt_mma_m16n8k16_bf16(float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  simt::mma_sync(1, d, a, b, c); }
inline void simt_ldmatrix(uint32_t* r, int count, bool trans, const void* row_address) {
  simt::ldmatrix(r, count, trans, row_address); }
inline void simt_cp_async(void* dst, const void* src, int size, int src_size, bool cg) {
  simt::cp_async(dst, src, size, src_size, cg); }
inline void simt_cp_async_commit() { simt::cp_async_commit(); }
inline void simt_cp_async_wait(int n) { simt::cp_async_wait(n); }
inline float simt_cvt_rna_tf32(float x) { return simt::cvt_rna_tf32(x); }
inline uint16_t simt_cvt_rn_bf16(float x) { return simt::cvt_rn_bf16(x); }
