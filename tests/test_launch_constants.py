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


def test_every_wrapper_reads_its_launch_constants_from_its_kernel_file():
    from cupycnn.ops import (augment, batchnorm, groupnorm, metrics, optim, pool, reduce,
                             softmax_xent)
    for module, file, names in (
            (augment, "augment", ("AUGMENT_THREADS", "PARAMS_THREADS")),
            (batchnorm, "batchnorm", ("BN_THREADS", "BN_RUNNING_THREADS",
                                      "BN_ELEMENTS_PER_BLOCK")),
            (groupnorm, "groupnorm", ("GN_THREADS", "GN_ROWS_PER_BLOCK",
                                      "GN_ELEMENTS_PER_BLOCK")),
            (metrics, "metrics", ("METRICS_THREADS",)),
            (optim, "optim", ("OPTIM_THREADS", "ELEMENTS_PER_THREAD", "CHUNK")),
            (pool, "pool", ("POOL_THREADS", "GLOBAL_POOL_PLANES_PER_BLOCK")),
            (reduce, "reduce", ("CHANNEL_SUM_THREADS",)),
            (softmax_xent, "softmax_xent", ("XENT_ROWS_PER_BLOCK", "XENT_THREADS",
                                            "MEAN_THREADS"))):
        k = _launch.kernel_constants(file)
        for name in names:
            assert getattr(module, name) == k[name], f"ops/{file}.py: {name}"
    k = _launch.kernel_constants("augment")
    assert augment._INTERPOLATION == {"nearest": k["INTERP_NEAREST"],
                                      "bilinear": k["INTERP_BILINEAR"]}
    assert sorted(augment._FILL_MODE.values()) == sorted(
        k[n] for n in ("FILL_CONSTANT", "FILL_NEAREST", "FILL_REFLECT", "FILL_WRAP"))


def test_the_optimizer_tables_columns_agree_with_optim_cu():
    """The reference lays out the segment and hyperparameter tables the kernel reads: each of
    its column numbers is the kernel's #define of the same name."""
    from cupycnn.reference import optim as reference
    k = _launch.kernel_constants("optim")
    names = [n for n in vars(reference) if n.startswith(("SEG_", "SGD_", "ADAM_", "MOMENTUM_"))
             and isinstance(getattr(reference, n), int)]
    assert len(names) >= 24
    for name in names:
        assert getattr(reference, name) == k[name], name
    assert (reference.SEGMENT_FIELDS, len(reference.SGD_COLUMNS), len(reference.ADAM_COLUMNS)) \
        == (k["SEGMENT_FIELDS"], k["SGD_FIELDS"], k["ADAM_FIELDS"])
