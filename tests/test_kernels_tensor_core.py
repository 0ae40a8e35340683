"""The kernel progressions of the convolution and the dense layer's GEMMs: the direct kernels
(fp32), and the tensor-core kernels at tf32 and bf16, against the float64 reference, on sim in
the three thread orders (and on cuda where there is a GPU), on awkward shapes: channels that are
no multiple of 8 or 16, odd sizes, stride 2 and 3, 1x1 and 7x7 kernels, batch 1, several tiles.

A tensor-core result must match the reference computed on the same rounded operands
(reference(..., precision=p), exact in float64) to FP32 accumulation error (1e-5 relative), and
the plain FP32 reference to the precision's own tolerance (tf32 1e-3, bf16 1e-2)."""
import numpy as np
import pytest

import cupycnn
from cupycnn import sim
from cupycnn.ops import conv2d as ops
from cupycnn.ops import tiles
from cupycnn.ops._storage import to_bf16
from cupycnn.ops.conv2d_stats import conv2d_forward_statistics
from cupycnn.ops.gemm import gemm
from cupycnn.reference import conv2d as reference
from cupycnn.reference import gemm as reference_gemm
from helpers import assert_matches, randn, rel_err

PRECISION_TOL = {"fp32": 1e-5, "tf32": 1e-3, "bf16": 1e-2}
# (version, precision) of every step of the progression but the tiled fp32 one, which
# test_kernels_conv2d.py and test_kernels_gemm.py check.
STEPS = [("direct", "fp32"), ("tensor_core", "tf32"), ("tensor_core", "bf16")]
STEP_IDS = ["direct-fp32", "tc-tf32", "tc-bf16"]

# (batch, C_in, H, W, C_out, kernel, stride, padding)
CONV_CASES = [
    (1, 3, 7, 7, 5, 3, 1, 1),                      # batch 1, 3 -> 5 channels
    (2, 5, 9, 6, 17, 1, 1, 0),                     # 1x1
    (2, 4, 7, 10, 6, (3, 5), (2, 1), (1, 2)),      # non-square kernel, unequal strides
    (2, 3, 11, 9, 10, 7, 2, 3),                    # 7x7 stride 2 (an ImageNet stem)
    (2, 20, 5, 5, 70, 3, 2, 1),                    # 70 output channels: two M tiles
    (2, 17, 6, 6, 9, 1, 2, 0),                     # 1x1 stride 2 (a shortcut)
    (1, 2, 8, 7, 3, (2, 3), (3, 3), (1, 2)),       # stride > kernel: phases without taps
    (2, 3, 16, 12, 8, 3, 1, 1),                    # 384 output pixels: split weight gradient
]
CONV_IDS = ["b1-3x3", "1x1", "3x5-s21", "7x7-s2", "70ch-s2", "1x1-s2", "2x3-s3", "split-wgrad"]


def _conv_operands(rng, case):
    n, c, h, w, o, k, s, p = case
    kh, kw = reference.pair(k)
    ho, wo = reference.output_size(h, w, (kh, kw), s, p)
    return (randn(rng, n, c, h, w), randn(rng, o, c, kh, kw), randn(rng, o),
            randn(rng, n, o, ho, wo), s, p)


def _f64(a):
    return a.astype(np.float64)


def _check(out, exact, plain, precision, name):
    """out against the reference on the rounded operands (exact) and the plain fp32 one."""
    assert_matches(out, exact, name)
    err = rel_err(out, plain)
    assert err < PRECISION_TOL[precision], f"{name}: {err:.2e} from the fp32 reference"


def _conv_products(x, w, b, dy, s, p, version):
    X, W, B, DY = (cupycnn.asarray(a) for a in (x, w, b, dy))
    return (ops.conv2d_forward(X, W, B, s, p, version=version),
            ops.conv2d_backward_input(DY, W, x.shape, s, p, version=version),
            ops.conv2d_backward_weight(DY, X, w.shape, s, p, version=version))


def _conv_references(x, w, b, dy, s, p, precision):
    x, w, b, dy = (_f64(a) for a in (x, w, b, dy))
    return (reference.conv2d_forward(x, w, b, s, p, precision),
            reference.conv2d_backward_input(dy, w, x.shape, s, p, precision),
            reference.conv2d_backward_weight(dy, x, w.shape, s, p, precision))


@pytest.mark.parametrize("version, precision", STEPS, ids=STEP_IDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_version(kernel_device, rng, case, version, precision):
    x, w, b, dy, s, p = _conv_operands(rng, case)
    with cupycnn.set_precision(precision):
        got = _conv_products(x, w, b, dy, s, p, version)
    exact = _conv_references(x, w, b, dy, s, p, precision)
    plain = _conv_references(x, w, b, dy, s, p, "fp32")
    for out, e, q, name in zip(got, exact, plain, ("y", "dx", "dw")):
        _check(out, e, q, precision, name)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_conv2d_tensor_core_with_the_large_tile(kernel_device, rng, precision):
    """The 128 x 64 tile (chosen for large shapes) on a small awkward one: partial M and N
    tiles, several reduction steps."""
    x, w, b, dy, s, p = _conv_operands(rng, (2, 9, 9, 7, 130, 3, 1, 1))
    with cupycnn.set_precision(precision), tiles.use_tile(tiles.LARGE):
        got = _conv_products(x, w, b, dy, s, p, "tensor_core")
    exact = _conv_references(x, w, b, dy, s, p, precision)
    plain = _conv_references(x, w, b, dy, s, p, "fp32")
    for out, e, q, name in zip(got, exact, plain, ("y", "dx", "dw")):
        _check(out, e, q, precision, name)


GEMM_SIZES = [(1, 1, 1), (17, 1, 3), (5, 33, 20), (65, 70, 33), (130, 9, 257)]
TRANSPOSES = [(False, False), (False, True), (True, False)]


@pytest.mark.parametrize("version, precision", STEPS, ids=STEP_IDS)
@pytest.mark.parametrize("ta, tb", TRANSPOSES, ids=["nn", "nt", "tn"])
@pytest.mark.parametrize("M, N, K", GEMM_SIZES, ids=lambda v: str(v))
def test_gemm_version(kernel_device, rng, M, N, K, ta, tb, version, precision):
    a = randn(rng, *((K, M) if ta else (M, K)))
    b = randn(rng, *((N, K) if tb else (K, N)))
    with cupycnn.set_precision(precision):
        out = gemm(cupycnn.asarray(a), cupycnn.asarray(b), ta, tb, version=version)
    exact = reference_gemm.gemm(_f64(a), _f64(b), ta, tb, precision=precision)
    _check(out, exact, reference_gemm.gemm(_f64(a), _f64(b), ta, tb), precision, "C")


@pytest.mark.parametrize("version, precision", STEPS, ids=STEP_IDS)
@pytest.mark.parametrize("bias_per", ["row", "column"])
def test_gemm_version_bias_alpha_beta_batch(kernel_device, rng, version, precision, bias_per):
    batch, M, N, K = 2, 67, 45, 29
    a, b = randn(rng, batch, M, K), randn(rng, N, K)       # b shared by the batch
    bias = randn(rng, M if bias_per == "row" else N)
    c = randn(rng, batch, M, N)
    out = cupycnn.asarray(c.copy())
    with cupycnn.set_precision(precision):
        gemm(cupycnn.asarray(a), cupycnn.asarray(b), False, True, alpha=0.5, beta=-1.5,
             out=out, bias=cupycnn.asarray(bias), bias_per=bias_per, version=version)
    def ref(p):      # (the reference writes its result into `out`: a fresh copy each time)
        return reference_gemm.gemm(_f64(a), _f64(b), False, True, alpha=0.5, beta=-1.5,
                                   out=_f64(c), bias=_f64(bias), bias_per=bias_per, precision=p)
    _check(out, ref(precision), ref("fp32"), precision, "C")


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_gemm_tensor_core_with_the_large_tile(kernel_device, rng, precision):
    a, b = randn(rng, 150, 40), randn(rng, 40, 70)
    with cupycnn.set_precision(precision), tiles.use_tile(tiles.LARGE):
        out = gemm(cupycnn.asarray(a), cupycnn.asarray(b))
    _check(out, reference_gemm.gemm(_f64(a), _f64(b), precision=precision),
           reference_gemm.gemm(_f64(a), _f64(b)), precision, "C")


# ------------------------------------------------------------------------ choosing and asking

def test_the_version_must_fit_the_precision(rng):
    cupycnn.use("sim")
    x, w = randn(rng, 1, 2, 5, 5), randn(rng, 3, 2, 3, 3)
    with pytest.raises(ValueError, match=r"conv2d_forward: the tensor_core kernels compute in "
                                         r"tf32 or bf16, but the precision is fp32"):
        ops.conv2d_forward(x, w, version="tensor_core")
    with cupycnn.set_precision("tf32"):
        with pytest.raises(ValueError, match=r"gemm: the direct kernels compute in fp32, but "
                                             r"the precision is tf32"):
            gemm(randn(rng, 2, 3), randn(rng, 3, 4), version="direct")
    with pytest.raises(ValueError, match=r"version must be one of direct, tiled, tensor_core"):
        ops.conv2d_forward(x, w, version="fast")


def test_one_image_must_fit_the_kernels_int():
    # The tensor-core gradients offset within an image in 32 bits (conv2d_tc.cu): C_in H W and
    # C_out H_out W_out are checked from the shapes alone, before anything is allocated.
    big = 2 ** 16          # 2^16 channels of 256 x 256: 2^32 elements in one image
    with pytest.raises(ValueError, match=r"C_in \* H \* W = 4294967296 exceeds the kernels' int"):
        ops.check_geometry("conv2d_forward", (1, big, 256, 256), (1, big, 1, 1), 1, 0)
    with pytest.raises(ValueError, match=r"C_out \* H_out \* W_out = 4294967296 exceeds"):
        ops.check_geometry("conv2d_forward", (1, 1, 256, 256), (big, 1, 1, 1), 1, 0)
    with pytest.raises(ValueError, match=r"C_out \* H_out \* W_out = 2147483648 exceeds"):
        ops.check_geometry("conv2d_forward", (1, 1, 256, 256), (big // 2, 1, 1, 1), 1, 0)   # 2^31
    assert ops.check_geometry("conv2d_forward", (1, 1, 256, 256), (big // 4, 1, 1, 1), 1, 0)[4] \
        == big // 4                                                               # 2^30 fits


def test_tile_choice_follows_the_shape():
    assert tiles.choose_tile(512, 128 * 32 * 32) is tiles.LARGE      # many blocks: reuse
    assert tiles.choose_tile(64, 27) is tiles.SMALL                  # the stem's weight grad
    assert tiles.choose_tile(512, 256 * 4 * 4) is tiles.SMALL        # 4x4 layer: fill the SMs
    for tile in tiles.TILES:
        assert tile.shared_bytes <= 48 * 1024                        # static shared memory
        assert dict(tile.defines("bf16"))["TC_BF16"] == 1
    with pytest.raises(ValueError, match="tf32 or bf16, not fp32"):
        tiles.LARGE.defines("fp32")


# ------------------------------------------------------------------- shared memory and copies

# The kernels whose two operands are BF16 activations (no cp.async at all).
BOTH_OPERANDS_BF16 = {"conv2d_tc_backward_weight_bf16", "gemm_tc_tn_bf16"}


def _tc_products(rng, K=32):
    """Every tensor-core kernel once, on shapes of several blocks and reduction steps."""
    x, w, dy = randn(rng, 2, 8, 9, 8), randn(rng, 24, 8, 3, 3), randn(rng, 2, 24, 9, 8)
    X, W, DY = (cupycnn.asarray(a) for a in (x, w, dy))
    XB, DYB = to_bf16(X), to_bf16(DY)           # BF16 activations: the _bf16 entry points
    return {
        "conv2d_tc_forward_bf16": lambda: ops.conv2d_forward(XB, W, None, 1, 1,
                                                             version="tensor_core"),
        "conv2d_tc_backward_input_bf16": lambda: ops.conv2d_backward_input(
            DYB, W, x.shape, 1, 1, version="tensor_core"),
        "conv2d_tc_backward_weight_bf16": lambda: ops.conv2d_backward_weight(
            DYB, XB, w.shape, 1, 1, version="tensor_core"),
        "conv2d_tc_forward": lambda: ops.conv2d_forward(X, W, None, 1, 1, version="tensor_core"),
        "conv2d_tc_forward_stats": lambda: conv2d_forward_statistics(X, W, None, 1, 1),
        "conv2d_tc_forward_stats_bf16": lambda: conv2d_forward_statistics(XB, W, None, 1, 1),
        "conv2d_tc_backward_input": lambda: ops.conv2d_backward_input(
            DY, W, x.shape, 1, 1, version="tensor_core"),
        "conv2d_tc_backward_weight": lambda: ops.conv2d_backward_weight(
            DY, X, w.shape, 1, 1, version="tensor_core"),
        "gemm_tc_nn": lambda: gemm(cupycnn.asarray(randn(rng, 70, K)),
                                   cupycnn.asarray(randn(rng, K, 66)), False, False),
        "gemm_tc_nt": lambda: gemm(cupycnn.asarray(randn(rng, 70, K)),
                                   cupycnn.asarray(randn(rng, 66, K)), False, True),
        "gemm_tc_tn": lambda: gemm(cupycnn.asarray(randn(rng, K, 70)),
                                   cupycnn.asarray(randn(rng, K, 66)), True, False),
        # the dense layer's products on BF16 activations (the weight, and dW, float32)
        "gemm_tc_nn_bf16": lambda: gemm(to_bf16(cupycnn.asarray(randn(rng, 70, K))),
                                        cupycnn.asarray(randn(rng, K, 66)), False, False),
        "gemm_tc_nt_bf16": lambda: gemm(to_bf16(cupycnn.asarray(randn(rng, 70, K))),
                                        cupycnn.asarray(randn(rng, 66, K)), False, True),
        "gemm_tc_tn_bf16": lambda: gemm(to_bf16(cupycnn.asarray(randn(rng, K, 70))),
                                        to_bf16(cupycnn.asarray(randn(rng, K, 66))), True, False),
    }


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("tile", tiles.TILES, ids=lambda t: t.name)
def test_tensor_core_shared_memory_is_free_of_bank_conflicts(rng, tile, precision):
    """The emulator counts, for every warp-wide ldmatrix and cp.async of each tensor-core kernel,
    the wavefronts a GPU's 32 banks need (sim.bank_conflicts): each takes the fewest possible,
    for the fragment loads and for the copies into shared memory (tc_tile.cuh's swizzle and
    thread patterns)."""
    cupycnn.use("sim")
    with cupycnn.set_precision(precision), tiles.use_tile(tile):
        for name, run in _tc_products(rng).items():
            with sim.bank_conflicts() as counts:
                run()
            for kind in ("ldmatrix", "cp_async"):
                c = getattr(counts, kind)
                if kind == "cp_async" and name in BOTH_OPERANDS_BF16:
                    # both operands BF16: through registers, no cp.async (tc_tile.cuh TcCopies)
                    assert c.instructions == 0, f"{name} {kind}: {c}"
                    continue
                assert c.instructions > 0 and c.conflict_free, f"{name} {kind}: {c}"


def _blocks_and_steps(m, n, k, tile):
    return -(-m // tile.bm) * -(-n // tile.bn), -(-k // tile.bk)


@pytest.mark.parametrize("tile", tiles.TILES, ids=lambda t: t.name)
def test_operands_contiguous_along_k_are_copied_16_bytes_at_a_time(rng, tile):
    """Where an operand is contiguous along the reduction and K % 4 == 0, its tiles arrive in
    16-byte cp.async copies: both operands of A B^T, A of A B and the forward convolution's
    weights; one float at a time for the others, and for everything when K % 4 != 0."""
    cupycnn.use("sim")
    M, N = 70, 66
    with cupycnn.set_precision("tf32"), tiles.use_tile(tile):
        for K in (32, 30):
            runs = _tc_products(rng, K)
            blocks, steps = _blocks_and_steps(M, N, K, tile)
            a, b = blocks * steps * tile.bm * tile.bk, blocks * steps * tile.bn * tile.bk
            vec = K % 4 == 0
            for name, (sixteen, four) in {
                    "gemm_tc_nt": ((a + b) // 4, 0) if vec else (0, a + b),
                    "gemm_tc_nn": (a // 4, b) if vec else (0, a + b),
                    "gemm_tc_tn": (0, a + b)}.items():
                with sim.bank_conflicts() as counts:
                    runs[name]()
                assert counts.copies == {4: four, 8: 0, 16: sixteen}, (name, K)
        # The convolution's weights: K = C_in kh kw = 72 (16-byte copies), then 7 x 3 x 3 = 63.
        for c_in in (8, 7):
            x, w = randn(rng, 2, c_in, 9, 8), randn(rng, 24, c_in, 3, 3)
            K = c_in * 9
            blocks, steps = _blocks_and_steps(24, 2 * 9 * 8, K, tile)
            with sim.bank_conflicts() as counts:
                ops.conv2d_forward(cupycnn.asarray(x), cupycnn.asarray(w), None, 1, 1,
                                   version="tensor_core")
            weight_floats = blocks * steps * tile.bm * tile.bk
            assert counts.copies[16] == (weight_floats // 4 if K % 4 == 0 else 0), c_in
            assert counts.copies[4] == blocks * steps * tile.bn * tile.bk + (
                0 if K % 4 == 0 else weight_floats), c_in
