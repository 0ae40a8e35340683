"""The proof in the machine code that the tensor-core kernels run on tensor cores: every kernel of
the tensor-core files, in every tile configuration and precision of ops/tiles.py, compiled by
nvcc for sm_80 and sm_90 with CuPy's options (cupycnn.machine_code), has the mma of its
precision in its SASS, HMMA.1688.F32.TF32 (tf32) or HMMA.16816.F32.BF16 (bf16) and no other
kind, with ldmatrix (LDSM) and cp.async (LDGSTS), and spills nothing; the FP32 kernels of the
same ops have no HMMA at all (so the check can tell the two apart)."""
import pytest

from cupycnn import machine_code
from cupycnn.ops import tiles

_MISSING = machine_code.missing_tools()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"{_MISSING}")

HMMA_OF = {"tf32": "HMMA.1688.F32.TF32", "bf16": "HMMA.16816.F32.BF16"}


def _precision(defines):
    return "bf16" if dict(defines)["TC_BF16"] else "tf32"


TC_CASES = [pytest.param(file, label, defines, arch, id=f"{file}-{label.replace(' ', '-')}-{arch}")
            for file in tiles.TC_FILES for label, defines in machine_code.variants(file)
            for arch in machine_code.ARCHS]


def test_every_tensor_core_file_and_variant_is_checked():
    assert set(tiles.TC_FILES) == {"conv2d_tc", "gemm_tc"}
    assert machine_code.entry_points("conv2d_tc") == [
        "conv2d_tc_backward_input", "conv2d_tc_backward_input_bf16", "conv2d_tc_backward_weight",
        "conv2d_tc_backward_weight_bf16", "conv2d_tc_forward", "conv2d_tc_forward_bf16",
        "conv2d_tc_forward_stats", "conv2d_tc_forward_stats_bf16"]
    assert machine_code.entry_points("gemm_tc") == [
        "gemm_tc_nn", "gemm_tc_nn_bf16", "gemm_tc_nt", "gemm_tc_nt_bf16", "gemm_tc_tn",
        "gemm_tc_tn_bf16"]
    assert len(TC_CASES) == len(tiles.TC_FILES) * len(tiles.TILES) * 2 * len(machine_code.ARCHS)


@pytest.mark.parametrize("file, label, defines, arch", TC_CASES)
def test_tensor_core_kernels_run_hmma_of_their_precision_without_spills(file, label, defines,
                                                                        arch):
    kernels = machine_code.inspect(file, arch, defines, label)
    assert [k.kernel for k in kernels] == machine_code.entry_points(file)
    want = HMMA_OF[_precision(defines)]
    for k in kernels:
        where = f"{k.kernel} ({label}, {arch})"
        assert k.hmma_kinds == (want,), f"{where}: HMMA kinds {k.hmma_kinds}, want {want}"
        # cp.async (LDGSTS) for every float operand; a BF16 operand is loaded into registers
        # (LDG) and stored to shared memory (tc_tile.cuh: TcCopies): the _bf16 weight gradients
        # (convolution and dense) have two BF16 operands, so no cp.async at all.
        assert k.count("LDSM") > 0, f"{where}: {k.opcodes}"
        if k.kernel in ("conv2d_tc_backward_weight_bf16", "gemm_tc_tn_bf16"):
            assert k.count("LDGSTS") == 0 and k.count("LDG") > 0, f"{where}: {k.opcodes}"
        else:
            assert k.count("LDGSTS") > 0, f"{where}: {k.opcodes}"
        if k.kernel.endswith("_bf16"):
            assert k.count("LDG") > 0 and k.count("STS") > 0, f"{where}: {k.opcodes}"
        assert (k.stack, k.spill_stores, k.spill_loads) == (0, 0, 0), (
            f"{where}: stack {k.stack} B, spill stores {k.spill_stores} B, loads "
            f"{k.spill_loads} B")
        assert k.count("LDL") == k.count("STL") == 0, f"{where}: local memory in the SASS"
        assert k.shared <= 48 * 1024, f"{where}: {k.shared} B of static shared memory"
        # The occupancy the tile asks for (__launch_bounds__) is what the SM gets.
        tile = next(t for t in tiles.TILES if t.defines(_precision(defines)) == tuple(defines))
        backward = k.kernel.startswith("conv2d_tc_backward")
        want_blocks = tile.min_blocks_backward if backward else tile.min_blocks
        assert k.blocks_per_sm >= want_blocks, (
            f"{where}: {k.registers} registers, {k.blocks_per_sm} blocks of {k.threads} threads "
            f"per SM, the tile asks for {want_blocks}")


# The kernels with a float operand contiguous along k (16-byte cp.async where K % 4 == 0; the
# _bf16 forward convolutions and A B^T too: their weights are float32).
WIDE_COPIES = {"gemm_tc_nn", "gemm_tc_nt", "gemm_tc_nt_bf16", "conv2d_tc_forward",
               "conv2d_tc_forward_bf16", "conv2d_tc_forward_stats", "conv2d_tc_forward_stats_bf16"}


@pytest.mark.parametrize("file, label, defines, arch", TC_CASES)
def test_16_byte_copies_are_in_the_sass_where_an_operand_allows(file, label, defines, arch):
    for k in machine_code.inspect(file, arch, defines, label):
        wide = sum(n for op, n in k.opcodes.items()
                   if op.startswith("LDGSTS") and "128" in op.split("."))
        assert (wide > 0) == (k.kernel in WIDE_COPIES), f"{k.kernel} ({label}, {arch}): {wide}"


def test_occupancy_follows_the_sm_limits():
    # Registers: 168 per thread of 128 threads (21504 per block, in 256-register units per warp)
    assert machine_code.occupancy(168, 32768, 128, "sm_90") == 3
    assert machine_code.occupancy(128, 32768, 128, "sm_90") == 4
    assert machine_code.occupancy(157, 0, 256, "sm_90") == 1      # 160 x 256 = 40960
    # Shared memory: 48 KiB blocks (+ 1 KiB each) in 228 KiB (sm_90) or 164 KiB (sm_80)
    assert machine_code.occupancy(32, 49152, 128, "sm_90") == 4
    assert machine_code.occupancy(32, 49152, 128, "sm_80") == 3
    # Threads, then the 32-block limit
    assert machine_code.occupancy(32, 0, 1024, "sm_90") == 2
    assert machine_code.occupancy(16, 0, 32, "sm_90") == 32


@pytest.mark.parametrize("file", ["conv2d", "gemm", "conv2d_direct", "gemm_direct"])
def test_the_fp32_kernels_have_no_hmma(file):
    kernels = machine_code.inspect(file, "sm_90")
    assert kernels
    for k in kernels:
        assert k.count("HMMA") == 0 and k.count("LDSM") == 0, f"{k.kernel}: {k.opcodes}"
    assert any(k.count("FFMA") > 0 for k in kernels)
