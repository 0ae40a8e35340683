"""Fused optimizer steps over flat buffers: launches kernels/optim.cu (one launch per step, for
every parameter and group), or on numpy runs cupycnn/cpu/optim.py (float32) or
reference/optim.py (float64).

Two small tables describe the flat buffers to the kernel:
    SegmentTable     where each parameter lies (offset, size) and its group; fixed once built.
    HyperparameterTable  one row of hyperparameters per group (the columns of
                     reference.optim.SGD_COLUMNS or ADAM_COLUMNS), kept on the device and
                     uploaded again only when a row changed.
`cupycnn.optim` builds both; these functions only check and launch.
"""
import math

import numpy as np

from .. import cpu
from .. import devices as _device
from ..cpu import optim as cpu_optim
from ..reference import optim as reference
from ..runtime import get_kernel
from ._check import check_arrays, check_int_array
from ._launch import kernel_constants

_K = kernel_constants("optim")
OPTIM_THREADS, ELEMENTS_PER_THREAD = _K["OPTIM_THREADS"], _K["ELEMENTS_PER_THREAD"]
CHUNK = _K["CHUNK"]                                  # elements per block


class SegmentTable:
    """The segments of the flat buffers: parameter k is [offsets[k], offsets[k] + sizes[k]) and
    belongs to group groups[k]. Segments must be sorted by offset, must not overlap and must lie
    inside a buffer of `flat_size` elements. Holds the host table (int64 [S, 4]: offset, size,
    group, first block) and its copy on the current device, made once."""

    def __init__(self, offsets, sizes, groups, flat_size, num_groups):
        op = "SegmentTable"
        offsets, sizes, groups = (np.asarray(a, dtype=np.int64).reshape(-1)
                                  for a in (offsets, sizes, groups))
        if not len(offsets) == len(sizes) == len(groups) >= 1:
            raise ValueError(f"{op}: offsets, sizes and groups must have one entry per parameter "
                             f"(at least one), got {len(offsets)}, {len(sizes)}, {len(groups)}")
        ends = offsets + sizes
        problems = []
        if (offsets < 0).any() or (sizes < 0).any():
            problems.append("negative offset or size")
        if (ends > flat_size).any():
            problems.append(f"a segment ends at {int(ends.max())}, past the buffer's {flat_size} "
                            f"elements")
        if (offsets[1:] < ends[:-1]).any():
            problems.append("segments overlap or are not sorted by offset")
        if (groups < 0).any() or (groups >= num_groups).any():
            problems.append(f"group index outside [0, {num_groups})")
        if problems:
            raise ValueError(f"{op}: " + "; ".join(problems))
        blocks = -(-sizes // CHUNK)
        first_block = np.concatenate([[0], np.cumsum(blocks)[:-1]])
        self.host = np.ascontiguousarray(np.stack([offsets, sizes, groups, first_block], axis=1))
        self.num_blocks = int(blocks.sum())
        self.flat_size, self.num_groups = int(flat_size), int(num_groups)
        self.device = self.host if not _device.runs_kernels() else _device.asarray(self.host)

    def __len__(self):
        return len(self.host)


class HyperparameterTable:
    """One row per parameter group, `columns` wide, computed in float64 on the host. `update`
    uploads a new table (float32 for the kernels; float64 kept as is on numpy) only when it
    differs from the last one; `uploads` counts the uploads."""

    def __init__(self, columns):
        self.columns = tuple(columns)
        self.host = None
        self.device = None
        self.uploads = 0

    def update(self, rows):
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != len(self.columns):
            raise ValueError(f"HyperparameterTable: rows must have shape (groups, "
                             f"{len(self.columns)}), got {rows.shape}")
        if self.host is not None and rows.shape == self.host.shape and \
                rows.tobytes() == self.host.tobytes():
            return False
        if not _device.runs_kernels():
            self.device = rows
        elif self.device is not None and self.device.shape == rows.shape:
            _device.write(self.device, rows.astype(np.float32))   # in place: the same address
        else:
            self.device = _device.asarray(rows.astype(np.float32))
        self.host = rows
        self.uploads += 1
        return True


class DeviceScalar:
    """One number the host sets and kernels read from device memory (Adam's step number), so
    that a replayed step reads this step's value at an address it captured."""

    def __init__(self, dtype):
        self.value = None
        self.device = _device.zeros((1,), dtype) if _device.runs_kernels() else None

    def write(self, value):
        self.value = value
        if self.device is not None:
            _device.write(self.device, np.array([value]))


def _check_tables(op, segments, table, columns, flat):
    if not isinstance(segments, SegmentTable):
        raise ValueError(f"{op}: segments must be a SegmentTable, got {type(segments).__name__}")
    if not isinstance(table, HyperparameterTable) or table.columns != tuple(columns) or \
            table.host is None:
        raise ValueError(f"{op}: groups must be a HyperparameterTable with the columns "
                         f"{', '.join(columns)}, filled by update()")
    if table.host.shape[0] != segments.num_groups:
        raise ValueError(f"{op}: the segments refer to {segments.num_groups} groups, the "
                         f"hyperparameter table has {table.host.shape[0]} rows")
    if flat.size != segments.flat_size:
        raise ValueError(f"{op}: params must have shape ({segments.flat_size},) (the segment "
                         f"table's buffer), got {tuple(flat.shape)}")
    if _device.runs_kernels():
        check_int_array(op, "segments", segments.device, (len(segments), 4))
        check_arrays(op, groups=(table.device, (segments.num_groups, len(columns))))
    bad = ~np.isfinite(table.host) & ~np.isneginf(table.host)   # ln(0) = -inf is a valid log
    if bad.any():
        raise ValueError(f"{op}: hyperparameter {columns[int(np.argwhere(bad)[0][1])]} is not "
                         f"finite")


def _check_grad_scale(op, grad_scale):
    if not math.isfinite(float(grad_scale)):
        raise ValueError(f"{op}: grad_scale must be finite, got {grad_scale}")


def sgd_step(params, grads, momentum_buffer, segments, groups, grad_scale=1.0):
    """One SGD step over the flat buffers, in place: params, grads and momentum_buffer are 1-D
    (flat_size,); momentum_buffer may be None when no group's row has a momentum mode."""
    op = "sgd_step"
    buffers = {"params": (params, ("flat",)), "grads": (grads, ("flat",))}
    if momentum_buffer is not None:
        buffers["momentum_buffer"] = (momentum_buffer, ("flat",))
    check_arrays(op, **buffers)
    _check_tables(op, segments, groups, reference.SGD_COLUMNS, params)
    _check_grad_scale(op, grad_scale)
    if momentum_buffer is None and \
            (groups.host[:, reference.SGD_MOMENTUM_MODE] != reference.MOMENTUM_NONE).any():
        raise ValueError(f"{op}: a group uses momentum, so momentum_buffer must be given")
    if not _device.runs_kernels():
        path = cpu_optim if cpu.fast(params, grads, momentum_buffer) else reference
        return path.sgd_step(params, grads, momentum_buffer, segments.host, groups.host,
                             grad_scale)
    if segments.num_blocks:
        get_kernel("optim", "sgd_step")(
            (segments.num_blocks,), (OPTIM_THREADS,),
            (params, grads, momentum_buffer, segments.device, np.int32(len(segments)),
             groups.device, np.float32(grad_scale)))
    return params


def adam_step(params, grads, exp_avg, exp_avg_sq, segments, groups, grad_scale=1.0, step=1,
              step_buffer=None):
    """One Adam / AdamW step number `step` (>= 1) over the flat buffers, in place: params,
    grads, exp_avg and exp_avg_sq are 1-D (flat_size,). The kernel reads the step number from
    device memory: `step_buffer`, an int64 [1] device array holding `step` (a DeviceScalar's,
    which a replayed step reads anew), or, when None, a copy of `step` made here."""
    op = "adam_step"
    check_arrays(op, params=(params, ("flat",)), grads=(grads, ("flat",)),
                 exp_avg=(exp_avg, ("flat",)), exp_avg_sq=(exp_avg_sq, ("flat",)))
    _check_tables(op, segments, groups, reference.ADAM_COLUMNS, params)
    _check_grad_scale(op, grad_scale)
    if int(step) < 1:
        raise ValueError(f"{op}: step counts from 1, got {step}")
    if not _device.runs_kernels():
        path = cpu_optim if cpu.fast(params, grads, exp_avg, exp_avg_sq) else reference
        return path.adam_step(params, grads, exp_avg, exp_avg_sq, segments.host, groups.host,
                              grad_scale, int(step))
    if step_buffer is None:
        step_buffer = _device.asarray(np.array([step], dtype=np.int64))
    check_arrays(op, dtypes=(np.int64,), step_buffer=(step_buffer, (1,)))
    if segments.num_blocks:
        get_kernel("optim", "adam_step")(
            (segments.num_blocks,), (OPTIM_THREADS,),
            (params, grads, exp_avg, exp_avg_sq, segments.device, np.int32(len(segments)),
             groups.device, np.float32(grad_scale), step_buffer))
    return params


__all__ = ["CHUNK", "OPTIM_THREADS", "SegmentTable", "HyperparameterTable", "DeviceScalar",
           "sgd_step",
           "adam_step"]
