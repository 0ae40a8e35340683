"""kernels/optim.cu against reference/optim.py: the fused SGD and Adam steps over flat buffers
with segments of every kind of size (0, 1, odd, a chunk and more, with gaps), several groups
and every momentum mode, on every kernel device.

The updates are in place, so "poisoning" means: the padding between segments holds NaN and
must still hold it afterwards (never touched), and momentum buffers of groups on their first
step hold NaN and must be overwritten. An element the kernel forgets keeps its old value, which
the comparison with the reference catches.
"""
import math

import numpy as np
import pytest

import cupycnn
from cupycnn.ops import optim as optim_ops
from cupycnn.reference import optim as ref
from helpers import assert_matches

CHUNK = optim_ops.CHUNK
# Segment sizes: empty, one element, odd, a chunk exactly, a chunk and one more, two chunks and
# an odd remainder; gaps between them of 0, 1 and 31 elements (odd offsets on purpose).
SIZES = [5, 0, 1, 37, CHUNK, CHUNK + 1, 2 * CHUNK + 333, 64]
GAPS = [0, 1, 31, 0, 7, 1, 0, 3]


def _layout(rng, num_groups):
    offsets, offset = [], 0
    for size, gap in zip(SIZES, GAPS):
        offset += gap
        offsets.append(offset)
        offset += size
    groups = rng.integers(0, num_groups, len(SIZES))
    groups[:num_groups] = np.arange(num_groups)           # every group owns a segment
    return offsets, SIZES, groups, offset + 5


def _padding_mask(offsets, sizes, flat_size):
    mask = np.ones(flat_size, bool)
    for o, n in zip(offsets, sizes):
        mask[o:o + n] = False
    return mask


def _buffers(rng, flat_size, mask, count):
    arrays = []
    for _ in range(count):
        a = rng.standard_normal(flat_size).astype(np.float32)
        a[mask] = np.nan
        arrays.append(a)
    return arrays


def _sgd_rows():
    """Four groups: plain SGD with L1, momentum on its first step (dampening, L2), running
    momentum with dampening and L1, and Nesterov with L2 and L1."""
    rows = np.zeros((4, len(ref.SGD_COLUMNS)))
    rows[:, ref.SGD_LR] = [0.1, 0.05, 0.2, 0.01]
    rows[:, ref.SGD_MOMENTUM] = [0.0, 0.9, 0.8, 0.95]
    rows[:, ref.SGD_ONE_MINUS_DAMPENING] = [1.0, 1.0 - 0.1, 1.0 - 0.3, 1.0]
    rows[:, ref.SGD_WEIGHT_DECAY] = [0.0, 1e-2, 0.0, 5e-2]
    rows[:, ref.SGD_L1] = [1e-2, 0.0, 3e-3, 1e-3]
    rows[:, ref.SGD_NESTEROV] = [0, 0, 0, 1]
    rows[:, ref.SGD_MOMENTUM_MODE] = [ref.MOMENTUM_NONE, ref.MOMENTUM_FIRST,
                                      ref.MOMENTUM_RUNNING, ref.MOMENTUM_RUNNING]
    return rows


def _adam_rows():
    """Three groups: Adam with coupled L2, AdamW (decoupled decay) with L1, and Adam with
    beta1 = 0 (log beta1 = -inf) and a large eps."""
    rows = np.zeros((3, len(ref.ADAM_COLUMNS)))
    betas = [(0.9, 0.999), (0.8, 0.99), (0.0, 0.9)]
    lrs, eps = [1e-2, 3e-3, 1e-1], [1e-8, 1e-6, 1e-3]
    for g, ((b1, b2), lr, e) in enumerate(zip(betas, lrs, eps)):
        rows[g, ref.ADAM_LR] = lr
        rows[g, ref.ADAM_BETA1], rows[g, ref.ADAM_ONE_MINUS_BETA1] = b1, 1 - b1
        rows[g, ref.ADAM_BETA2], rows[g, ref.ADAM_ONE_MINUS_BETA2] = b2, 1 - b2
        rows[g, ref.ADAM_LOG_BETA1] = math.log(b1) if b1 > 0 else -math.inf
        rows[g, ref.ADAM_LOG_BETA2] = math.log(b2)
        rows[g, ref.ADAM_EPS] = e
        rows[g, ref.ADAM_DECAY_FACTOR] = 1.0
    rows[0, ref.ADAM_WEIGHT_DECAY] = 0.1
    rows[1, ref.ADAM_DECAY_FACTOR] = 1 - 3e-3 * 0.05
    rows[1, ref.ADAM_L1] = 1e-3
    return rows


def _tables(rng, rows):
    offsets, sizes, groups, flat_size = _layout(rng, len(rows))
    segments = optim_ops.SegmentTable(offsets, sizes, groups, flat_size, len(rows))
    table = optim_ops.HyperparameterTable(
        ref.SGD_COLUMNS if rows.shape[1] == len(ref.SGD_COLUMNS) else ref.ADAM_COLUMNS)
    table.update(rows)
    return segments, table, _padding_mask(offsets, sizes, flat_size)


def _check_result(name, got, expected, mask):
    got = cupycnn.asnumpy(got)
    assert np.isnan(got[mask]).all(), f"{name}: the padding between segments was written"
    assert_matches(got[~mask], expected[~mask], name)


@pytest.mark.parametrize("grad_scale", [1.0, 0.25])
def test_sgd_step_matches_reference(kernel_device, rng, grad_scale):
    segments, table, mask = _tables(rng, _sgd_rows())
    params, grads, buf = _buffers(rng, segments.flat_size, mask, 3)
    first_step = np.isin(np.arange(segments.flat_size),
                         [i for (o, n, g, _) in segments.host if g == 1 for i in range(o, o + n)])
    buf[first_step] = np.nan            # MOMENTUM_FIRST must not read the buffer
    expected = [a.astype(np.float64) for a in (params, grads, buf)]
    ref.sgd_step(expected[0], expected[1], expected[2], segments.host, table.host, grad_scale)
    p, g, b = (cupycnn.asarray(a) for a in (params, grads, buf))
    optim_ops.sgd_step(p, g, b, segments, table, grad_scale)
    _check_result("params", p, expected[0], mask)
    _check_result("momentum_buffer", b, expected[2], mask)   # group 0's part left as it was
    np.testing.assert_array_equal(cupycnn.asnumpy(g), grads)      # gradients are only read


def test_sgd_step_without_momentum_takes_no_buffer(kernel_device, rng):
    rows = _sgd_rows()[:1]
    segments, table, mask = _tables(rng, rows)
    params, grads = _buffers(rng, segments.flat_size, mask, 2)
    expected = params.astype(np.float64)
    ref.sgd_step(expected, grads.astype(np.float64), None, segments.host, table.host)
    p = cupycnn.asarray(params)
    optim_ops.sgd_step(p, cupycnn.asarray(grads), None, segments, table)
    _check_result("params", p, expected, mask)


@pytest.mark.parametrize("step", [1, 2, 1000])
def test_adam_step_matches_reference(kernel_device, rng, step):
    segments, table, mask = _tables(rng, _adam_rows())
    params, grads, m, v = _buffers(rng, segments.flat_size, mask, 4)
    v = np.abs(v) * 1e-2                # a second moment is >= 0 (NaN padding stays NaN)
    expected = [a.astype(np.float64) for a in (params, grads, m, v)]
    ref.adam_step(*expected, segments.host, table.host, 0.5, step)
    p, g, dm, dv = (cupycnn.asarray(a) for a in (params, grads, m, v))
    optim_ops.adam_step(p, g, dm, dv, segments, table, 0.5, step)
    _check_result("params", p, expected[0], mask)
    _check_result("exp_avg", dm, expected[2], mask)
    _check_result("exp_avg_sq", dv, expected[3], mask)


def test_bad_inputs_name_the_op(kernel_device, rng):
    segments, table, mask = _tables(rng, _sgd_rows())
    n = segments.flat_size
    p, g, b = (cupycnn.asarray(np.zeros(k, np.float32)) for k in (n, n, n))
    with pytest.raises(ValueError, match=rf"sgd_step: grads must have shape \(flat={n},\), got "
                                         rf"\({n - 1},\)"):
        optim_ops.sgd_step(p, cupycnn.asarray(np.zeros(n - 1, np.float32)), b, segments, table)
    with pytest.raises(ValueError, match="a group uses momentum, so momentum_buffer must be "
                                         "given"):
        optim_ops.sgd_step(p, g, None, segments, table)
    adam_segments, adam, _ = _tables(rng, _adam_rows())
    with pytest.raises(ValueError, match="adam_step: step counts from 1, got 0"):
        optim_ops.adam_step(p, g, b, b, adam_segments, adam, 1.0, 0)
    with pytest.raises(ValueError, match="sgd_step: groups must be a HyperparameterTable with "
                                         "the columns lr, momentum"):
        optim_ops.sgd_step(p, g, b, segments, adam)
    with pytest.raises(ValueError, match="the segments refer to 4 groups, the hyperparameter "
                                         "table has 3 rows"):
        optim_ops.adam_step(p, g, b, b, segments, adam, 1.0, 1)
    with pytest.raises(ValueError, match="grad_scale must be finite"):
        optim_ops.sgd_step(p, g, b, segments, table, float("nan"))
    with pytest.raises(ValueError, match="segments overlap or are not sorted"):
        optim_ops.SegmentTable([0, 3], [5, 5], [0, 0], 10, 1)
    with pytest.raises(ValueError, match="past the buffer's 8 elements"):
        optim_ops.SegmentTable([0], [9], [0], 8, 1)
