"""Adam and AdamW, PyTorch's `torch.optim.Adam` and `torch.optim.AdamW`, plus L1.

For each parameter w with gradient grad at step t (from 1), in a group with hyperparameters lr,
betas (beta1, beta2), eps, weight_decay (lambda) and l1:

    g = grad_scale * grad + l1 * sign(w)
    Adam:   g = g + lambda * w                  (L2 coupled into the gradient)
    AdamW:  w = w * (1 - lr * lambda)           (decoupled weight decay)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g^2
    w = w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

(eps is added outside the square root, after the bias correction, as PyTorch does.) Kernel:
`adam_step` in kernels/optim.cu, one launch for every parameter; reference:
`reference.optim.adam_step`.
"""
import math

import numpy as np

from ..ops import optim as optim_ops
from ..reference import optim as ref
from ..ops._check import shown
from .optimizer import Optimizer


class Adam(Optimizer):
    """Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, l1=0).

    PyTorch's `torch.optim.Adam`: its arguments, order and defaults, its bias corrections, eps
    outside the square root, and L2 `weight_decay` coupled into the gradient. `l1` (not in
    PyTorch) adds l1 * sign(w) to the gradient. `params`: `model.parameters()` or a list of group
    dicts, unspecified keys from these defaults. amsgrad, maximize, foreach, capturable,
    differentiable and fused are not offered.
    """

    columns = ref.ADAM_COLUMNS
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, l1=0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      l1=l1))
        self._state_buffer("exp_avg")
        self._state_buffer("exp_avg_sq")
        self.step_count = 0   # steps taken; PyTorch's state["step"] of every parameter
        # The kernel reads the step number from the device, so a replayed step needs no new
        # launch arguments: prepare_step writes it there.
        self._step_number = optim_ops.DeviceScalar(np.int64)

    def _decoupled(self):
        return False

    def _validate(self, group, where):
        self._number(group, "lr", where, "learning rate")
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{self.name}: betas must be a pair (beta1, beta2){where}, got "
                             f"{shown(betas)}")
        pair = {"betas[0]": betas[0], "betas[1]": betas[1]}
        for key in pair:
            self._number(pair, key, where, "beta", low=0.0, high=1.0, high_open=True)
        self._number(group, "eps", where, "epsilon")
        self._number(group, "weight_decay", where, "weight decay")
        self._number(group, "l1", where, "L1 coefficient")

    def _table_row(self, index, group):
        lr, weight_decay = float(group["lr"]), float(group["weight_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        row = [0.0] * len(self.columns)
        row[ref.ADAM_LR] = lr
        row[ref.ADAM_BETA1], row[ref.ADAM_ONE_MINUS_BETA1] = beta1, 1.0 - beta1
        row[ref.ADAM_BETA2], row[ref.ADAM_ONE_MINUS_BETA2] = beta2, 1.0 - beta2
        row[ref.ADAM_LOG_BETA1] = math.log(beta1) if beta1 > 0 else -math.inf
        row[ref.ADAM_LOG_BETA2] = math.log(beta2) if beta2 > 0 else -math.inf
        row[ref.ADAM_EPS] = float(group["eps"])
        row[ref.ADAM_WEIGHT_DECAY] = 0.0 if self._decoupled() else weight_decay
        row[ref.ADAM_DECAY_FACTOR] = 1.0 - lr * weight_decay if self._decoupled() else 1.0
        row[ref.ADAM_L1] = float(group["l1"])
        return row

    def _prepare_state(self):
        self.step_count += 1
        self._step_number.write(self.step_count)

    def _launch(self):
        optim_ops.adam_step(self.flat_params, self.flat_grads, self.flat_state["exp_avg"],
                            self.flat_state["exp_avg_sq"], self._segments, self._table,
                            self.grad_scale, self.step_count, step_buffer=self._step_number.device)

    # ------------------------------------------------------------------------- checkpoints
    def _param_state(self, k, host):
        if self.step_count == 0:
            return {}
        return {"step": np.array(float(self.step_count), dtype=np.float32),
                "exp_avg": self._host_segment(host["exp_avg"], k),
                "exp_avg_sq": self._host_segment(host["exp_avg_sq"], k)}

    def _load_param_states(self, states, problems):
        steps = set()
        for p, entry in zip(self.params, states):
            if not entry:
                steps.add(0)
                continue
            missing = [key for key in ("step",) + self.state_names if key not in entry]
            extra = sorted(set(entry) - {"step", *self.state_names})
            if missing:
                problems.append(f"{p.name}: state lacks {', '.join(missing)}")
            if extra:
                problems.append(f"{p.name}: unexpected state {', '.join(map(str, extra))} for "
                                f"{self.name}" + (" (amsgrad is not supported)"
                                                  if "max_exp_avg_sq" in extra else ""))
            if "step" in entry:
                step = float(np.asarray(entry["step"]))
                if step != int(step) or step < 1:
                    problems.append(f"{p.name}: step {step} is not a whole number >= 1")
                else:
                    steps.add(int(step))
        if len(steps) > 1:
            problems.append(f"the parameters have taken different numbers of steps "
                            f"({', '.join(map(str, sorted(steps)))}); cupycnn steps every "
                            f"parameter together")
        step = steps.pop() if len(steps) == 1 else 0

        def apply():
            self.step_count = step
            for name in self.state_names:
                self._write_state(name, [entry.get(name) for entry in states])
        return apply


class AdamW(Adam):
    """AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, l1=0).

    PyTorch's `torch.optim.AdamW`: Adam with decoupled weight decay (w *= 1 - lr * weight_decay
    before the Adam update, not through the moments), weight_decay defaulting to 1e-2. `l1`
    still adds l1 * sign(w) to the gradient (it goes through the moments).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, l1=0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, l1=l1)

    def _decoupled(self):
        return True
