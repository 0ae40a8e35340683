"""Launch constants are written once, in their kernel file, and read from there by the wrappers."""
from cupycnn.ops import _launch
from cupycnn.ops import conv2d


def test_kernel_constants_reads_the_integer_defines():
    k = _launch.kernel_constants("conv2d")
    assert (k["CONV_TILE_M"], k["CONV_TILE_P"], k["CONV_TILE_K"], k["CONV_THREADS"]) == (64, 64, 16, 256)
    assert k["CONV_THREADS_X"] == 16 and k["CONV_LOADS"] == 4      # expressions of earlier names
    assert k["WARP_SIZE"] == 32                                     # from the included common.cuh
    assert "FLOAT_LOWEST" not in k and "FULL_WARP_MASK" not in k    # not plain integers: left out


def test_the_conv_wrapper_uses_the_kernel_file_values():
    k = _launch.kernel_constants("conv2d")
    assert (conv2d.TILE_M, conv2d.TILE_P, conv2d.TILE_K) == (k["CONV_TILE_M"], k["CONV_TILE_P"],
                                                             k["CONV_TILE_K"])
    assert (conv2d.THREADS, conv2d.REDUCE_THREADS) == (k["CONV_THREADS"], k["CONV_REDUCE_THREADS"])
