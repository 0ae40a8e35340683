"""The emulator's matrix and copy instructions (simt.h, through kernels/tensor_core.cuh) against
NumPy models of the PTX ISA's fragment layouts and roundings, in every thread order (and on a GPU
where there is one); and the proof that the checks bite: a kernel that reads a cp.async
destination without its wait, or without the barrier after it, or that puts a fragment element
in the wrong register, fails."""
import numpy as np
import pytest

import cupycnn
from cupycnn import nvrtc, runtime, sim
from cupycnn.reference.rounding import bf16_bits, bf16_to_float32, round_bf16, round_tf32

SOURCE = r'''
#include "tensor_core.cuh"

// One mma per warp: lane l of warp w reads its fragments from a[w][l][4], b[w][l][2],
// c[w][l][4] and writes d[w][l][4]. kind 0: m16n8k8 tf32, 1: m16n8k16 bf16.
extern "C" __global__ void mma_check(const unsigned* a, const unsigned* b, const float* c,
                                     float* d, int kind) {
  const int t = threadIdx.x;
  unsigned af[4], bf[2];
  float acc[4];
  for (int r = 0; r < 4; ++r) { af[r] = a[t * 4 + r]; acc[r] = c[t * 4 + r]; }
  for (int r = 0; r < 2; ++r) bf[r] = b[t * 2 + r];
  if (kind == 0) mma_tf32_16x8x8(acc, af, bf);
  else mma_bf16_16x8x16(acc, af, bf);
  for (int r = 0; r < 4; ++r) d[t * 4 + r] = acc[r];
}

// ldmatrix of `count` matrices (1, 2, 4), transposed or not, from a 64 x 8 tile of 16-bit
// values in shared memory; lane l gives the address of row row_of_lane[l]. out[l][4].
extern "C" __global__ void ldmatrix_check(const unsigned short* src, const int* row_of_lane,
                                          unsigned* out, int count, int trans) {
  __shared__ __align__(16) unsigned short tile[64 * 8];
  const int l = threadIdx.x;
  for (int e = l; e < 64 * 8; e += 32) tile[e] = src[e];
  __syncthreads();
  unsigned r[4] = {0, 0, 0, 0};
  const void* row = tile + row_of_lane[l] * 8;
  if (count == 1) { unsigned q[1]; ldmatrix_x1(q, row); r[0] = q[0]; }
  else if (count == 2 && !trans) { unsigned q[2]; ldmatrix_x2(q, row); r[0] = q[0]; r[1] = q[1]; }
  else if (count == 2) { unsigned q[2]; ldmatrix_x2_trans(q, row); r[0] = q[0]; r[1] = q[1]; }
  else if (!trans) ldmatrix_x4(r, row);
  else ldmatrix_x4_trans(r, row);
  for (int i = 0; i < 4; ++i) out[l * 4 + i] = r[i];
}

// Each thread: group 0 = a 16-byte copy of src[t][0..3] (src_bytes[t] of it), group 1 = an
// 8-byte copy of src[t][4..5] and a 4-byte copy of src[t][6]. It records its own 7 floats of
// shared memory after wait_group 1 (out[t][0..6]) and after wait_group 0 (out[t][8..14]).
extern "C" __global__ void cp_async_check(const float* src, const int* src_bytes, float* out) {
  __shared__ __align__(16) float buf[64 * 8];
  const int t = threadIdx.x;
  float* mine = buf + t * 8;
  cp_async_16(mine, src + t * 8, src_bytes[t]);
  cp_async_commit();
  cp_async_8(mine + 4, src + t * 8 + 4, 8);
  cp_async_4(mine + 6, src + t * 8 + 6, 4);
  cp_async_commit();
  cp_async_wait<1>();
  for (int i = 0; i < 7; ++i) out[t * 16 + i] = mine[i];
  cp_async_wait<0>();
  for (int i = 0; i < 7; ++i) out[t * 16 + 8 + i] = mine[i];
}

// A two-stage pipeline: at step s every thread copies src[s][t] into stage s % 2 of shared
// memory, then reads its neighbour's element of the previous step's stage: out[t] = sum over s
// of src[s][(t + 1) % n]. mode 0 as it should be; 1 without the cp.async wait; 2 without the
// barrier after it.
extern "C" __global__ void pipeline_check(const float* src, float* out, int steps, int mode) {
  __shared__ __align__(16) float stage[2][64];
  const int t = threadIdx.x, n = blockDim.x;
  cp_async_4(&stage[0][t], src + t, 4);
  cp_async_commit();
  float sum = 0.0f;
  for (int s = 0; s < steps; ++s) {
    if (s + 1 < steps) cp_async_4(&stage[(s + 1) % 2][t], src + (s + 1) * n + t, 4);
    cp_async_commit();                        // (an empty group on the last step)
    if (mode != 1) cp_async_wait<1>();        // step s has landed; s + 1 may be in flight
    if (mode != 2) __syncthreads();           // ... for every thread
    sum += stage[s % 2][(t + 1) % n];
    __syncthreads();                          // stage s % 2 is refilled at step s + 1
  }
  out[t] = sum;
}

extern "C" __global__ void convert_check(const float* x, unsigned* tf32, unsigned short* bf,
                                         unsigned* bf_pairs, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    tf32[i] = tf32_bits(x[i]);
    bf[i] = float_to_bf16(x[i]).bits;
    if (i % 2 == 0 && i + 1 < n) bf_pairs[i / 2] = pack_bf16x2(x[i], x[i + 1]);
  }
}

// Misuse the emulator must refuse: 0 ldmatrix at an address 2 bytes off, 1 ldmatrix from global
// memory, 2 an mma in a warp of 16 threads, 3 a 4-byte cp.async.cg.
extern "C" __global__ void misuse(float* g, int what) {
  __shared__ __align__(16) unsigned short tile[16 * 8];
  for (int e = threadIdx.x; e < 16 * 8; e += blockDim.x) tile[e] = 0;
  __syncthreads();
  unsigned r[1];
  float acc[4] = {0, 0, 0, 0};
  unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  if (what == 0) ldmatrix_x1(r, tile + (threadIdx.x % 8) * 8 + 1);
  if (what == 1) ldmatrix_x1(r, g);
  if (what == 2) mma_tf32_16x8x8(acc, a, b);
#ifdef SIMT_EMULATION
  if (what == 3) simt_cp_async(tile, g, 4, 4, true);
#endif
  g[threadIdx.x] = acc[0];
}
'''

_modules = {}


def _kernel(name):
    key = (cupycnn.devices.device(), cupycnn.devices.xp())    # (each fake GPU is a new CuPy)
    if key not in _modules:
        _modules[key] = runtime.load_module(code=SOURCE)
    return _modules[key].get_function(name)


def _host(a):
    return np.asarray(cupycnn.asnumpy(a))


# ------------------------------------------------------------------- fragment layouts (PTX ISA)
# Lane l, g = l // 4, t = l % 4. Each function gives, per lane and register, the (row, col) of the
# operand tile the register holds (for bf16: of its low half; the high half is col + 1 for A and
# row + 1 for B).

def tf32_a_coords(l, r):
    return l // 4 + 8 * (r % 2), l % 4 + 4 * (r // 2)


def tf32_b_coords(l, r):
    return l % 4 + 4 * r, l // 4


def bf16_a_coords(l, r):
    return l // 4 + 8 * (r % 2), 2 * (l % 4) + 8 * (r // 2)


def bf16_b_coords(l, r):
    return 2 * (l % 4) + 8 * r, l // 4


def acc_coords(l, r):
    return l // 4 + 8 * (r // 2), 2 * (l % 4) + r % 2


def _fragments(kind, A, B, C, swap_a=False):
    """Per-lane registers a[32][4], b[32][2], c[32][4] of one warp's operands."""
    a = np.zeros((32, 4), np.uint32)
    b = np.zeros((32, 2), np.uint32)
    c = np.zeros((32, 4), np.float32)
    for l in range(32):
        for r in range(4):
            rr = {1: 2, 2: 1}.get(r, r) if swap_a else r      # the "wrong fragment index" bug
            if kind == "tf32":
                a[l, rr] = A.view(np.uint32)[tf32_a_coords(l, r)]
            else:
                i, k = bf16_a_coords(l, r)
                a[l, rr] = int(bf16_bits(A[i, k])) | int(bf16_bits(A[i, k + 1])) << 16
            c[l, r] = C[acc_coords(l, r)]
        for r in range(2):
            if kind == "tf32":
                b[l, r] = B.view(np.uint32)[tf32_b_coords(l, r)]
            else:
                k, j = bf16_b_coords(l, r)
                b[l, r] = int(bf16_bits(B[k, j])) | int(bf16_bits(B[k + 1, j])) << 16
    return a, b, c


def _mma_model(kind, A, B, C):
    """D = A B + C with the operands as the tensor cores see them, exact products and sum,
    rounded once to float32; as fragments d[32][4]."""
    if kind == "tf32":     # the hardware ignores a tf32 operand's low 13 bits
        trunc = lambda x: (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
        Ae, Be = trunc(A), trunc(B)
    else:
        Ae, Be = round_bf16(A), round_bf16(B)
    D = (Ae.astype(np.float64) @ Be.astype(np.float64) + C).astype(np.float32)
    return np.array([[D[acc_coords(l, r)] for r in range(4)] for l in range(32)], np.float32)


def _run_mma(kind, warps, operands, swap_a=False):
    frags = [_fragments(kind, *op, swap_a=swap_a) for op in operands]
    a, b, c = (np.concatenate([f[i] for f in frags]) for i in range(3))
    d = cupycnn.asarray(np.full((32 * warps, 4), np.nan, np.float32))
    _kernel("mma_check")((1,), (32 * warps,), (cupycnn.asarray(a), cupycnn.asarray(b),
                                                cupycnn.asarray(c), d,
                                                np.int32(kind == "bf16")))
    return _host(d)


def _operands(rng, kind, warps):
    k = 8 if kind == "tf32" else 16
    ops = []
    for _ in range(warps):
        A = rng.standard_normal((16, k)).astype(np.float32)
        B = rng.standard_normal((k, 8)).astype(np.float32)
        if kind == "tf32":          # proper tf32 operands, as a kernel's cvt.rna makes them
            A, B = round_tf32(A), round_tf32(B)
        ops.append((A, B, rng.standard_normal((16, 8)).astype(np.float32)))
    return ops


def _assert_mma(device, got, want):
    if device == "sim":       # exact products and sum, one rounding: bit for bit
        np.testing.assert_array_equal(got, want)
    else:                     # the hardware's accumulation order is its own
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["tf32", "bf16"])
def test_mma_matches_the_ptx_fragment_layout(kernel_device, rng, kind):
    """Two warps, each its own A, B, C: D = A B + C element for element."""
    ops = _operands(rng, kind, 2)
    got = _run_mma(kind, 2, ops)
    want = np.concatenate([_mma_model(kind, *op) for op in ops])
    _assert_mma(kernel_device, got, want)


@pytest.mark.parametrize("kind", ["tf32", "bf16"])
def test_a_wrong_fragment_index_fails(kernel_device, rng, kind):
    """Registers a[1] and a[2] swapped (rows 8-15 confused with columns 4-7): the product is
    wrong, so the layout check above would catch a kernel that did this."""
    ops = _operands(rng, kind, 1)
    got = _run_mma(kind, 1, ops, swap_a=True)
    want = _mma_model(kind, *ops[0])
    assert np.abs(got - want).max() > 0.1


def test_tf32_mma_ignores_the_low_13_bits(rng):
    cupycnn.use("sim")
    A, B, C = _operands(rng, "tf32", 1)[0]
    noise = lambda x: (x.view(np.uint32) | np.uint32(0x1FFF)).view(np.float32)
    np.testing.assert_array_equal(_run_mma("tf32", 1, [(noise(A), noise(B), C)]),
                                  _run_mma("tf32", 1, [(A, B, C)]))


def _ldmatrix_model(tile, row_of_lane, count, trans):
    out = np.zeros((32, 4), np.uint32)
    for l in range(32):
        for i in range(count):
            if trans:    # lane l: rows 2(l%4), +1 of matrix i, column l//4
                e = [tile[row_of_lane[8 * i + 2 * (l % 4) + h], l // 4] for h in range(2)]
            else:        # lane l: row l//4, columns 2(l%4), +1
                e = [tile[row_of_lane[8 * i + l // 4], 2 * (l % 4) + h] for h in range(2)]
            out[l, i] = int(e[0]) | int(e[1]) << 16
    return out


@pytest.mark.parametrize("count, trans", [(1, False), (2, False), (4, False), (2, True),
                                          (4, True)], ids=["x1", "x2", "x4", "x2.trans",
                                                           "x4.trans"])
def test_ldmatrix_matches_the_ptx_layout(kernel_device, rng, count, trans):
    tile = rng.integers(0, 2**16, (64, 8), dtype=np.uint16)
    row_of_lane = rng.permutation(64)[:32].astype(np.int32)   # any rows, in any order
    out = cupycnn.asarray(np.zeros((32, 4), np.uint32))
    _kernel("ldmatrix_check")((1,), (32,), (cupycnn.asarray(tile), cupycnn.asarray(row_of_lane),
                                            out, np.int32(count), np.int32(trans)))
    np.testing.assert_array_equal(_host(out)[:, :count],
                                  _ldmatrix_model(tile, row_of_lane, count, trans)[:, :count])


@pytest.mark.parametrize("order", sim.ORDERS)
def test_cp_async_lands_at_its_wait_group_with_zero_fill(rng, order):
    cupycnn.use("sim")
    sim.set_thread_order(order, seed=5)
    src = rng.standard_normal((64, 8)).astype(np.float32)
    src_bytes = rng.choice([0, 4, 8, 12, 16], 64).astype(np.int32)
    out = np.full((64, 16), 7.0, np.float32)
    _kernel("cp_async_check")((1,), (64,), (src, src_bytes, out))
    group0 = src[:, :4].copy()
    group0[np.arange(4)[None, :] * 4 >= src_bytes[:, None]] = 0.0     # zero-filled past src_size
    # After wait_group 1: group 0 has landed, group 1 (floats 4..6) is still undefined (0xFF).
    np.testing.assert_array_equal(out[:, :4], group0)
    assert (out[:, 4:7].view(np.uint32) == 0xFFFFFFFF).all()
    np.testing.assert_array_equal(out[:, 8:12], group0)
    np.testing.assert_array_equal(out[:, 12:15], src[:, 4:7])


def test_the_bank_check_counts_wavefronts_as_a_gpu_serves_them(rng):
    """sim.bank_conflicts: ldmatrix's 8 rows of one matrix in 8 different 16-byte bank groups
    take one wavefront; 8 rows 128 bytes apart, all in the same banks, take 8. cp_async_check's
    copies land 32 bytes apart per thread: its 16-byte copies 2-way (8 lanes per phase span 256
    bytes), its 8-byte ones 4-way (16 lanes over 512 bytes), its 4-byte ones 8-way (32 lanes
    over 1 KiB, 4 banks)."""
    cupycnn.use("sim")
    tile = cupycnn.asarray(rng.integers(0, 2**16, (64, 8), dtype=np.uint16))
    out = cupycnn.asarray(np.zeros((32, 4), np.uint32))
    for rows, waves in ((np.arange(32), 1), ((np.arange(32) * 8) % 64, 8)):
        with sim.bank_conflicts() as counts:
            _kernel("ldmatrix_check")((1,), (32,), (tile, cupycnn.asarray(rows.astype(np.int32)),
                                                    out, np.int32(4), np.int32(0)))
        assert (counts.ldmatrix.instructions, counts.ldmatrix.ideal,
                counts.ldmatrix.wavefronts, counts.ldmatrix.worst) == (1, 4, 4 * waves, waves)
        assert counts.ldmatrix.conflict_free == (waves == 1)
    src = rng.standard_normal((64, 8)).astype(np.float32)
    with sim.bank_conflicts() as counts:
        _kernel("cp_async_check")((1,), (32,), (src, np.full(64, 16, np.int32),
                                                np.zeros((64, 16), np.float32)))
    c = counts.cp_async
    assert (c.instructions, c.ideal, c.wavefronts, c.worst) == (3, 4 + 2 + 1, 4 * 2 + 2 * 4 + 8, 8)
    assert counts.copies == {4: 32, 8: 32, 16: 32}
    assert counts.ldmatrix.instructions == 0
    with sim.bank_conflicts() as counts:                 # counting is off outside the block
        pass
    assert counts.cp_async.instructions == 0


@pytest.mark.parametrize("order", sim.ORDERS)
def test_pipeline_with_wait_and_barrier_is_right(rng, order):
    cupycnn.use("sim")
    sim.set_thread_order(order, seed=9)
    src = rng.standard_normal((5, 64)).astype(np.float32)
    out = np.zeros(64, np.float32)
    _kernel("pipeline_check")((1,), (64,), (src, out, np.int32(5), np.int32(0)))
    np.testing.assert_allclose(out, np.roll(src, -1, axis=1).sum(0), rtol=1e-6)


@pytest.mark.parametrize("mode, what", [(1, "the cp.async wait"), (2, "the barrier")],
                         ids=["no-wait", "no-barrier"])
def test_a_missing_wait_or_barrier_fails(rng, mode, what):
    """Without `what`, a thread reads shared memory before the copy has landed (or before
    another thread's copy has): the result is wrong (NaN) in at least one thread order."""
    cupycnn.use("sim")
    src = rng.standard_normal((5, 64)).astype(np.float32)
    want = np.roll(src, -1, axis=1).sum(0)
    wrong = 0
    for order in sim.ORDERS:
        sim.set_thread_order(order, seed=9)
        out = np.zeros(64, np.float32)
        _kernel("pipeline_check")((1,), (64,), (src, out, np.int32(5), np.int32(mode)))
        wrong += not np.allclose(out, want, rtol=1e-6)
    assert wrong >= 1, f"a pipeline without {what} passed in every thread order"


def test_conversions_match_the_numpy_models(kernel_device, rng):
    special = np.array([0.0, -0.0, 1.0, 1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11), 1 + 2**-8,
                        1 + 3 * 2**-8, -(1 + 3 * 2**-8), 3.4028235e38, -3.4028235e38, np.inf,
                        -np.inf, np.nan, 1e-40, -1e-45, 65504.0, 2**-126], np.float32)
    x = np.concatenate([special, rng.standard_normal(1000).astype(np.float32) *
                        np.float32(10.0) ** rng.integers(-30, 30, 1000)]).astype(np.float32)
    n = len(x)
    tf32 = cupycnn.asarray(np.zeros(n, np.uint32))
    bf = cupycnn.asarray(np.zeros(n, np.uint16))
    pairs = cupycnn.asarray(np.zeros(n // 2, np.uint32))
    _kernel("convert_check")((1,), (128,), (cupycnn.asarray(x), tf32, bf, pairs, np.int32(n)))
    want_tf32 = round_tf32(x).view(np.uint32)
    finite = ~np.isnan(x)
    np.testing.assert_array_equal(_host(tf32)[finite], want_tf32[finite])
    assert np.isnan(_host(tf32).view(np.float32)[~finite]).all()
    np.testing.assert_array_equal(_host(bf), bf16_bits(x))
    b = bf16_bits(x).astype(np.uint32)
    np.testing.assert_array_equal(_host(pairs), b[0::2] | (b[1::2] << 16))
    np.testing.assert_array_equal(bf16_to_float32(bf16_bits(x))[finite], round_bf16(x)[finite])


@pytest.mark.parametrize("what, message", [
    (0, "ldmatrix: row address .* is not 16-byte aligned"),
    (1, "ldmatrix: row address .* is not in shared memory"),
    (2, "mma.sync.m16n8k8.tf32 needs all 32 lanes"),
    (3, "cp.async.cg: copy size 4"),
])
def test_misuse_is_an_error_not_garbage(what, message):
    cupycnn.use("sim")
    g = np.zeros(32, np.float32)
    block = 16 if what == 2 else 32
    with pytest.raises(sim.SimError, match=message):
        _kernel("misuse")((1,), (block,), (g, np.int32(what)))


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_the_wrappers_compile_to_real_instructions(arch):
    """NVRTC (with ptxas, for the cubin) accepts every wrapper's inline PTX; the PTX has the
    instructions themselves."""
    result = nvrtc.compile_source(runtime.expand_includes(SOURCE, "test", [runtime.kernel_dir()]),
                                  "test_sim_matrix.cu", arch)
    for instruction in ("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
                        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
                        "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
                        "cp.async.cg.shared.global", "cp.async.wait_group 1",
                        "cvt.rna.tf32.f32", "cvt.rn.bf16.f32", "cvt.rn.bf16x2.f32"):
        assert instruction in result.ptx, instruction
    assert result.cubin_bytes > 0
