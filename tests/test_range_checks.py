"""Sizes the kernels take as 32-bit ints are checked in their wrappers: a clear ValueError naming
the op and the size, never a silent wrap (np.int32 of a NumPy integer wraps). The limits are
lowered here so that small arrays cross them."""
import numpy as np
import pytest

import cupycnn
from cupycnn.ops import _check, batchnorm, elementwise, gemm, reduce, softmax_xent


@pytest.fixture(autouse=True)
def on_sim():
    cupycnn.use("sim")


def test_elementwise_keeps_room_for_its_grid_stride_loop(monkeypatch):
    from cupycnn.runtime import ELEMENTWISE_MAX_BLOCKS, ELEMENTWISE_THREADS
    monkeypatch.setattr(_check, "INT32_MAX", ELEMENTWISE_MAX_BLOCKS * ELEMENTWISE_THREADS + 100)
    elementwise.relu_forward(np.ones(100, np.float32))
    with pytest.raises(ValueError, match=r"relu_forward: n = 101 does not fit the kernel's "
                                         r"32-bit int \(at most 100\)"):
        elementwise.relu_forward(np.ones(101, np.float32))


@pytest.mark.parametrize("call, message", [
    (lambda: softmax_xent.softmax_xent_forward(np.zeros((4, 30), np.float32),
                                               np.zeros(4, np.int32)),
     "softmax_xent: elements = 120"),
    (lambda: softmax_xent.labels_to_int32(np.zeros(200, np.int64), 10), "narrow_labels: n = 200"),
    (lambda: reduce.channel_sum(np.zeros((2, 3, 5, 5), np.float32)), "channel_sum: elements = 150"),
    (lambda: batchnorm.batchnorm_stats(np.zeros((2, 3, 5, 5), np.float32)),
     "batchnorm_stats: elements = 150"),
    (lambda: gemm.gemm(np.zeros((20, 8), np.float32), np.zeros((8, 7), np.float32)),
     "gemm: a_elements = 160"),
])
def test_wrappers_refuse_sizes_over_32_bits(monkeypatch, call, message):
    monkeypatch.setattr(_check, "INT32_MAX", 100)
    with pytest.raises(ValueError, match=message):
        call()


def test_gemm_grid_y_is_checked(monkeypatch):
    monkeypatch.setattr(_check, "GRID_YZ_MAX", 1)
    with pytest.raises(ValueError, match=r"gemm: the launch grid \(1, 2, 1\) is over CUDA's "
                                         r"limits"):
        gemm.gemm(np.zeros((gemm.TILE_M + 1, 4), np.float32), np.zeros((4, 4), np.float32))


def test_every_launch_refuses_arrays_over_32_bit_indexing(monkeypatch):
    from cupycnn import runtime
    monkeypatch.setattr(runtime, "INT32_MAX", 50)
    with pytest.raises(ValueError, match="over the kernels' 32-bit indexing"):
        cupycnn.ops.pool.global_avg_pool2d_forward(np.zeros((2, 3, 5, 5), np.float32))
