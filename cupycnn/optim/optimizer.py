"""The `Optimizer` base: parameter groups, the flat buffers, one fused launch per step,
checkpoints.

Built like PyTorch's from `model.parameters()` (a list of `cupycnn.layers.Parameter`) or from a
list of group dicts, each `{"params": [...], "lr": ..., ...}` with unspecified keys taken from
the optimizer's defaults; a parameter may be in one group only.

Construction moves every parameter into one flat buffer, `flat_params`, and every gradient into
a second, `flat_grads` (`Parameter.rebind`: each becomes a view, and the layers keep working
through `params[key]` / `grads[key]` without noticing). Parameters are laid out group after
group, in the order given (the order of the state dict's indices), each starting at a multiple
of SEGMENT_ALIGN elements; the padding between them is zero and never updated. The optimizer's
state (momentum buffers, Adam's moments) lives in `flat_state`, buffers of the same layout.
`param_segments[k]` is the (offset, size) of parameter k in all of them: what a data-parallel
all-reduce of `flat_grads` in buckets needs.

`step()` makes ONE kernel launch for the whole model, whatever the number of tensors and groups
(kernels/optim.cu): the kernel walks the flat buffers with a table of segments (fixed) and a
table of each group's hyperparameters, which is uploaded again only when a hyperparameter
changed (a schedule setting `lr`, say). `grad_scale` (default 1) multiplies the gradients inside
the step: a data-parallel sum of gradients over N ranks becomes their mean with grad_scale = 1/N.
On the numpy device the same step runs as the NumPy reference (reference/optim.py) on the same
flat buffers.

Differences from torch.optim: every parameter always has a gradient (no `None`), so every
parameter steps at every `step()` and the step count is one per optimizer; `zero_grad()` fills
the gradients with zeros (layers overwrite their gradients in backward anyway); parameter groups
cannot be added after construction (the flat buffers are fixed).
"""
import copy
import math
import numbers

import numpy as np

from .. import devices as _device
from ..layers.base import Parameter
from ..ops import optim as optim_ops
from ..ops._check import float_dtypes, shown
from .torch_compat import translate_group

SEGMENT_ALIGN = 32   # elements: every parameter starts on a 128-byte line of the flat buffers

_METADATA_KEYS = ("name", "param_names")   # free labels a group may carry


def _align(n):
    return -(-n // SEGMENT_ALIGN) * SEGMENT_ALIGN


def _param_key(p):
    return id(p.layer), p.key


class Optimizer:
    """Base class of SGD, Adam and AdamW; see the module docstring. Subclasses set `columns`
    (the hyperparameter table's columns), `state_names`, and implement `_validate`,
    `_table_row`, `_launch`, `_param_state` and `_load_param_states`."""

    columns = ()
    state_names = ()

    def __init__(self, params, defaults):
        self.name = type(self).__name__
        self.defaults = dict(defaults)
        self._validate(self.defaults, "")
        self.param_groups = self._make_groups(params)
        for index, group in enumerate(self.param_groups):
            self._validate(group, f" in parameter group {index}")
        self._lay_out()
        self.grad_scale = 1.0
        self.flat_state = {}
        self._table = optim_ops.HyperparameterTable(self.columns)

    # ------------------------------------------------------------------------ construction
    def _make_groups(self, params):
        if isinstance(params, (Parameter, dict)):
            raise TypeError(f"{self.name}: params must be a list of Parameters (model."
                            f"parameters()) or a list of parameter-group dicts, got a single "
                            f"{type(params).__name__}")
        items = list(params)
        if not items:
            raise ValueError(f"{self.name}: got an empty parameter list")
        if all(isinstance(item, dict) for item in items):
            raw_groups = items
        elif not any(isinstance(item, dict) for item in items):
            raw_groups = [{"params": items}]
        else:
            raise TypeError(f"{self.name}: params must be all Parameters or all group dicts, not "
                            f"a mix")
        allowed = set(self.defaults) | {"params"} | set(_METADATA_KEYS)
        owner = {}
        groups = []
        for index, raw in enumerate(raw_groups):
            unknown = sorted(set(raw) - allowed)
            if unknown:
                raise ValueError(f"{self.name}: parameter group {index} has unknown keys "
                                 f"{', '.join(unknown)}; a group takes params and "
                                 f"{', '.join(self.defaults)}")
            if "params" not in raw:
                raise ValueError(f"{self.name}: parameter group {index} has no 'params' key")
            members = raw["params"]
            members = [members] if isinstance(members, Parameter) else list(members)
            if not members:
                raise ValueError(f"{self.name}: parameter group {index} has no parameters")
            for p in members:
                if not isinstance(p, Parameter):
                    raise TypeError(f"{self.name}: parameter group {index} holds a "
                                    f"{type(p).__name__}; parameters must be "
                                    f"cupycnn.layers.Parameter (from model.parameters())")
                if _param_key(p) in owner:
                    first = owner[_param_key(p)]
                    where = (f"groups {first} and {index}" if first != index
                             else f"group {index} twice")
                    raise ValueError(f"{self.name}: parameter {p.name} appears in {where}; a "
                                     f"parameter can be in one group only")
                owner[_param_key(p)] = index
            group = {"params": members}
            for key, value in self.defaults.items():
                group[key] = copy.copy(raw.get(key, value))
            for key in _METADATA_KEYS:
                if key in raw:
                    group[key] = raw[key]
            groups.append(group)
        return groups

    def _lay_out(self):
        """Move every parameter and gradient into the flat buffers (see the module docstring)."""
        self.params = [p for group in self.param_groups for p in group["params"]]
        self._group_of = [g for g, group in enumerate(self.param_groups)
                          for _ in group["params"]]
        dtype = None
        for p in self.params:
            for what, a in (("value", p.data), ("gradient", p.grad)):
                if not _device.is_device_array(a):
                    raise ValueError(f"{self.name}: the {what} of parameter {p.name} is not an "
                                     f"array of the current device {_device.device()!r}; build "
                                     f"the model and the optimizer on the same device")
                if a.dtype not in float_dtypes():
                    raise ValueError(f"{self.name}: parameter {p.name} is {a.dtype}; the "
                                     f"{_device.device()} device takes "
                                     f"{' or '.join(map(str, float_dtypes()))}")
                if tuple(a.shape) != p.shape:
                    raise ValueError(f"{self.name}: the gradient of parameter {p.name} has shape "
                                     f"{tuple(a.shape)}, its value {p.shape}")
            if dtype is None:
                dtype = p.data.dtype
            elif p.data.dtype != dtype or p.grad.dtype != dtype:
                raise ValueError(f"{self.name}: parameter {p.name} is {p.data.dtype} but "
                                 f"{self.params[0].name} is {dtype}; all must share one dtype")
        segments, offset = [], 0
        for p in self.params:
            offset = _align(offset)
            segments.append((offset, p.size))
            offset += p.size
        self.param_segments = segments
        self.flat_params = _device.zeros((_align(offset),), dtype)
        self.flat_grads = _device.zeros((_align(offset),), dtype)
        self._views = []
        for p, (start, size) in zip(self.params, segments):
            data = self.flat_params[start:start + size].reshape(p.shape)
            grad = self.flat_grads[start:start + size].reshape(p.shape)
            p.rebind(data, grad)
            self._views.append((data, grad))
        self._segments = optim_ops.SegmentTable(
            [o for o, _ in segments], [n for _, n in segments], self._group_of,
            self.flat_params.size, len(self.param_groups))

    def _state_buffer(self, name):
        """The flat state buffer `name`, made (zeros) on first use."""
        if name not in self.flat_state:
            self.flat_state[name] = _device.zeros(self.flat_params.shape, self.flat_params.dtype)
        return self.flat_state[name]

    # --------------------------------------------------------------------- hyperparameters
    def _number(self, group, key, where, what, low=0.0, high=None, high_open=False):
        value = group[key]
        ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and \
            math.isfinite(float(value)) and float(value) >= low and \
            (high is None or (float(value) < high if high_open else float(value) <= high))
        if not ok:
            bound = f">= {low:g}" if high is None else \
                f"in [{low:g}, {high:g}{')' if high_open else ']'}"
            raise ValueError(f"{self.name}: invalid {what} {key}={shown(value)}{where}: must be a "
                             f"finite number {bound}")
        return float(value)

    def _validate(self, group, where):
        raise NotImplementedError

    def _table_row(self, group_index, group):
        raise NotImplementedError

    def _table_rows(self):
        return np.array([self._table_row(i, g) for i, g in enumerate(self.param_groups)],
                        dtype=np.float64)

    @property
    def table_uploads(self):
        """How many times the hyperparameter table was uploaded (once at the first step, then
        once per step in which a hyperparameter or a group's state changed)."""
        return self._table.uploads

    # -------------------------------------------------------------------------------- step
    def _check_bindings(self):
        for p, (data, grad) in zip(self.params, self._views):
            if p.layer.params.get(p.key) is not data or p.layer.grads.get(p.key) is not grad:
                raise RuntimeError(
                    f"{self.name}: parameter {p.name} no longer lives in this optimizer's flat "
                    f"buffers (it was replaced: by another optimizer built over the same model, "
                    f"or by Layer.to()); build the optimizer after the last such change")

    def step(self, closure=None):
        """Update every parameter from its gradient in one launch. `closure`, if given, is
        called first (it recomputes the loss) and its value returned, as in PyTorch.
        The same as prepare_step() then launch_step()."""
        loss = closure() if closure is not None else None
        self.prepare_step()
        self.launch_step()
        return loss

    def prepare_step(self):
        """The host half of a step: check the groups, write this step's hyperparameter table
        (and step number) into their device buffers, in place, and make the state buffers;
        the optimizer's host state then reads as after the step. A replayed step (a CUDA graph,
        the sim launch list) calls this before each replay and replays launch_step()."""
        self._check_bindings()
        for index, group in enumerate(self.param_groups):
            self._validate(group, f" in parameter group {index}")
        if not math.isfinite(float(self.grad_scale)):
            raise ValueError(f"{self.name}: grad_scale must be finite, got {self.grad_scale}")
        self._table.update(self._table_rows())
        self._prepare_state()

    def launch_step(self):
        """The device half of a step: the one fused launch, from what prepare_step wrote. It
        does no host work, so a recorded or captured step can replay it."""
        self._launch()

    def _prepare_state(self):
        """Subclasses: make the state buffers this step needs, advance host counters."""

    def _launch(self):
        raise NotImplementedError

    def zero_grad(self):
        """Set every gradient to zero (one fill of the flat gradient buffer)."""
        self.flat_grads.fill(0)

    # ------------------------------------------------------------------------- checkpoints
    def _host_flat_state(self):
        return {name: np.array(_device.asnumpy(buf)) for name, buf in self.flat_state.items()}

    def _host_segment(self, flat, k):
        start, size = self.param_segments[k]
        return flat[start:start + size].reshape(self.params[k].shape).copy()

    def state_dict(self):
        """PyTorch's structure, NumPy arrays: {"state": {k: {name: array, ...}}, "param_groups":
        [{hyperparameters..., "params": [k, ...]}]}, where k numbers the parameters in group
        order. A parameter's state appears once it exists (after the first step), as in
        PyTorch."""
        groups, index = [], 0
        for group in self.param_groups:
            packed = {key: copy.deepcopy(value) for key, value in group.items() if key != "params"}
            packed["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            groups.append(packed)
        host = self._host_flat_state()
        state = {}
        for k in range(len(self.params)):
            entry = self._param_state(k, host)
            if entry:
                state[k] = entry
        return {"state": state, "param_groups": groups}

    def _param_state(self, k, host):
        raise NotImplementedError

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and state from state_dict() (or from a torch.optim state dict
        converted to NumPy). The group layout (number of groups, parameters per group) and every
        shape must match; every mismatch is reported in one ValueError and nothing is changed
        unless all match. A hyperparameter the saved group lacks (torch has no l1) takes the
        default."""
        problems = []
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(f"{self.name}.load_state_dict: expected a dict with 'state' and "
                             f"'param_groups', got {type(state_dict).__name__}"
                             + (f" with keys {sorted(state_dict)}"
                                if isinstance(state_dict, dict) else ""))
        saved_groups, saved_state = list(state_dict["param_groups"]), state_dict["state"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{self.name}.load_state_dict: the state has {len(saved_groups)} "
                             f"parameter groups, this optimizer {len(self.param_groups)}")
        new_groups, saved_ids, apply = [], [], None
        for g, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            ids = list(saved.get("params", []))
            if len(ids) != len(group["params"]):
                problems.append(f"group {g}: {len(ids)} parameters in the state, "
                                f"{len(group['params'])} in the optimizer")
            saved_ids += ids
            new = translate_group(saved, g, self.name, self._decoupled(), problems)
            for key, value in self.defaults.items():
                new.setdefault(key, copy.copy(value))
            try:
                self._validate(new, f" in saved group {g}")
            except ValueError as e:
                problems.append(str(e))
            new_groups.append(new)
        if len(saved_ids) == len(self.params):
            states = [saved_state.get(i, {}) for i in saved_ids]
            listed = set(saved_ids)
            stray = sorted(str(i) for i in saved_state if i not in listed)
            if stray:
                problems.append(f"state for parameter ids {', '.join(stray)}, which no group "
                                f"lists")
            for k, (p, entry) in enumerate(zip(self.params, states)):
                for key, value in entry.items():
                    shape = tuple(np.shape(value))
                    if key in self.state_names and shape != p.shape:
                        problems.append(f"{p.name} ({key}): shape {shape} in the state, "
                                        f"{p.shape} in the model")
            apply = self._load_param_states(states, problems)
        if problems:
            raise ValueError(f"{self.name}.load_state_dict: the state does not match this "
                             f"optimizer; " + "; ".join(problems))
        for group, new in zip(self.param_groups, new_groups):
            params = group["params"]
            group.clear()
            group["params"] = params
            group.update(new)
        apply()

    def _load_param_states(self, states, problems):
        """Check the per-parameter states (adding to `problems`); return a function that
        installs them."""
        raise NotImplementedError

    def _write_state(self, name, arrays):
        """Fill the flat state buffer `name` from per-parameter host arrays (None: zeros)."""
        host = np.zeros(self.flat_params.shape, dtype=self.flat_params.dtype)
        for (start, size), value in zip(self.param_segments, arrays):
            if value is not None:
                host[start:start + size] = np.asarray(_device.asnumpy(value)).reshape(-1)
        self._state_buffer(name)[...] = _device.asarray(host)

    def _decoupled(self):
        return False

    # ------------------------------------------------------------------------------ repr
    def __repr__(self):
        lines = [f"{self.name} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        return "\n".join(lines + [")"])
