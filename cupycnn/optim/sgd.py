"""Stochastic gradient descent with momentum, PyTorch's `torch.optim.SGD`, plus L1.

For each parameter w with gradient grad, in a group with hyperparameters lr, momentum (mu),
dampening (tau), weight_decay (lambda), nesterov and l1:

    g = grad_scale * grad + lambda * w + l1 * sign(w)
    if mu != 0:
        b = g                              on the group's first step with momentum
        b = mu * b + (1 - tau) * g         after
        g = g + mu * b  if nesterov  else  b
    w = w - lr * g

Kernel: `sgd_step` in kernels/optim.cu, one launch for every parameter; reference:
`reference.optim.sgd_step`.
"""
import numpy as np

from ..ops import optim as optim_ops
from ..reference import optim as ref
from ..ops._check import shown
from .optimizer import Optimizer


class SGD(Optimizer):
    """SGD(params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, l1=0).

    PyTorch's `torch.optim.SGD` (2.x): its arguments, in its order, with its defaults (lr
    defaults to 1e-3 as in PyTorch 2.13), the momentum buffer taken as the gradient on the first
    step, dampening, Nesterov, and L2 `weight_decay` coupled into the gradient. `l1` (not in
    PyTorch) adds l1 * sign(w) to the gradient. `params`: `model.parameters()` or a list of group
    dicts (`{"params": [...], "lr": 0.1, "weight_decay": 0, "l1": 0}`), unspecified keys from
    these defaults. maximize, foreach, fused and differentiable are not offered.
    """

    columns = ref.SGD_COLUMNS
    state_names = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 l1=0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov, l1=l1))
        # Per group: has the momentum buffer been started (PyTorch keeps it per parameter and
        # starts it at the first step in which the parameter's group has momentum).
        self._momentum_started = [False] * len(self.param_groups)

    def _validate(self, group, where):
        self._number(group, "lr", where, "learning rate")
        momentum = self._number(group, "momentum", where, "momentum")
        dampening = self._number(group, "dampening", where, "dampening", low=-float("inf"))
        self._number(group, "weight_decay", where, "weight decay")
        self._number(group, "l1", where, "L1 coefficient")
        if not isinstance(group["nesterov"], (bool, np.bool_)):
            raise ValueError(f"{self.name}: nesterov must be True or False{where}, got "
                             f"{shown(group['nesterov'])}")
        if group["nesterov"] and (momentum <= 0 or dampening != 0):
            raise ValueError(f"{self.name}: Nesterov momentum requires a momentum > 0 and zero "
                             f"dampening{where}, got momentum={group['momentum']!r}, "
                             f"dampening={group['dampening']!r}")

    def _momentum_mode(self, index, group):
        if float(group["momentum"]) == 0.0:
            return ref.MOMENTUM_NONE
        return ref.MOMENTUM_RUNNING if self._momentum_started[index] else ref.MOMENTUM_FIRST

    def _table_row(self, index, group):
        row = [0.0] * len(self.columns)
        row[ref.SGD_LR] = float(group["lr"])
        row[ref.SGD_MOMENTUM] = float(group["momentum"])
        row[ref.SGD_ONE_MINUS_DAMPENING] = 1.0 - float(group["dampening"])
        row[ref.SGD_WEIGHT_DECAY] = float(group["weight_decay"])
        row[ref.SGD_L1] = float(group["l1"])
        row[ref.SGD_NESTEROV] = float(bool(group["nesterov"]))
        row[ref.SGD_MOMENTUM_MODE] = float(self._momentum_mode(index, group))
        return row

    def _prepare_state(self):
        # The table already says MOMENTUM_FIRST where this step starts a group's buffer; after
        # it, the buffers are started.
        uses_momentum = [float(g["momentum"]) != 0.0 for g in self.param_groups]
        if any(uses_momentum):
            self._state_buffer("momentum_buffer")
        for index, used in enumerate(uses_momentum):
            self._momentum_started[index] |= used

    def _launch(self):
        optim_ops.sgd_step(self.flat_params, self.flat_grads,
                           self.flat_state.get("momentum_buffer"), self._segments,
                           self._table, self.grad_scale)

    # ------------------------------------------------------------------------- checkpoints
    def _param_state(self, k, host):
        if not self._momentum_started[self._group_of[k]]:
            return {}
        return {"momentum_buffer": self._host_segment(host["momentum_buffer"], k)}

    def _load_param_states(self, states, problems):
        started = []
        for g, group in enumerate(self.param_groups):
            members = [k for k, owner in enumerate(self._group_of) if owner == g]
            has = [("momentum_buffer" in states[k]) for k in members]
            for k in members:
                extra = sorted(set(states[k]) - {"momentum_buffer"})
                if extra:
                    problems.append(f"{self.params[k].name}: unexpected state "
                                    f"{', '.join(map(str, extra))} for SGD")
            if any(has) and not all(has):
                problems.append(f"group {g}: some parameters have a momentum buffer and some do "
                                f"not; cupycnn starts the buffers of a group together")
            started.append(all(has))

        def apply():
            self._momentum_started = started
            if any(started) or "momentum_buffer" in self.flat_state:
                self._write_state("momentum_buffer",
                                  [s.get("momentum_buffer") for s in states])
        return apply
