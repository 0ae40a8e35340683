"""Bad input never reaches a kernel: ValueError naming the op and what was expected and received."""
import numpy as np
import pytest

import cupycnn
from cupycnn.ops import elementwise, gemm, reduce
from helpers import randn


class FakeGpuArray:
    """Stands for an array of another device (a cupy.ndarray while the device is sim)."""
    __module__ = "cupy"
    shape, dtype, ndim = (4, 4), np.dtype(np.float32), 2


@pytest.fixture(params=["sim", "numpy"])
def cpu_device(request):
    cupycnn.use(request.param)
    return request.param


def test_wrong_shape_names_op_and_both_shapes(cpu_device, rng):
    a, b = cupycnn.asarray(randn(rng, 4, 5)), cupycnn.asarray(randn(rng, 6, 3))
    with pytest.raises(ValueError, match=r"gemm: b must have shape \(K=5, N\), got \(6, 3\)"):
        gemm.gemm(a, b)


def test_mismatched_shapes_of_an_elementwise_op(cpu_device, rng):
    x, dy = cupycnn.asarray(randn(rng, 4, 5)), cupycnn.asarray(randn(rng, 4, 6))
    with pytest.raises(ValueError, match=r"relu_backward: dy must have shape \(4, 5\), got \(4, 6\)"):
        elementwise.relu_backward(x, dy)


def test_wrong_dtype(rng):
    cupycnn.use("sim")
    with pytest.raises(ValueError, match=r"relu_forward: x must be float32 or bf16 \(uint16\) "
                                         r"on the sim device, got float64"):
        elementwise.relu_forward(randn(rng, 3, dtype=np.float64))
    with pytest.raises(ValueError, match=r"relu_forward: x must be float32 or float64 or bf16 "
                                         r"\(uint16\) on the numpy device, got int64"):
        cupycnn.use("numpy")
        elementwise.relu_forward(np.arange(3))


def test_mixed_dtypes_on_numpy(rng):
    cupycnn.use("numpy")
    with pytest.raises(ValueError, match="add: b is float64 but a is float32"):
        elementwise.add(randn(rng, 3), randn(rng, 3, dtype=np.float64))


def test_non_contiguous(cpu_device, rng):
    x = cupycnn.asarray(randn(rng, 8, 8))[:, ::2]
    with pytest.raises(ValueError, match=r"channel_sum: x must be C-contiguous .* shape \(8, 4\)"):
        reduce.channel_sum(x)


def test_wrong_device(cpu_device, rng):
    with pytest.raises(ValueError, match="relu_forward: x must be a numpy.ndarray on the current "
                                         "device .* got an array on the GPU; move it with "
                                         r"cupycnn.asarray\(\)"):
        elementwise.relu_forward(FakeGpuArray())
    with pytest.raises(ValueError, match="must be a numpy.ndarray .* got a builtins.list"):
        elementwise.relu_forward([1.0, 2.0])


def test_a_host_array_on_the_cuda_device_is_named(cuda_device, rng):
    x = randn(rng, 4, 4)
    with pytest.raises(ValueError, match=r"relu_forward: x must be a cupy.ndarray on the current "
                                         r"device 'cuda', got a numpy.ndarray; move it with "
                                         r"cupycnn.asarray\(\)"):
        elementwise.relu_forward(x)
    np.testing.assert_array_equal(cupycnn.asnumpy(elementwise.relu_forward(cupycnn.asarray(x))),
                                  np.maximum(x, 0))


def test_transposing_both_operands_is_refused(cpu_device, rng):
    with pytest.raises(ValueError, match="transposing both"):
        gemm.gemm(cupycnn.asarray(randn(rng, 2, 2)), cupycnn.asarray(randn(rng, 2, 2)), True, True)
