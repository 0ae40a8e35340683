"""Learning-rate schedules, PyTorch's `torch.optim.lr_scheduler` (also importable as
`cupycnn.optim.lr_scheduler`).

A schedule adjusts `group["lr"]` of every parameter group of an optimizer (each group from its
own base rate, `group["initial_lr"]`, set when the schedule is made), in plain Python, with
PyTorch's formulas and PyTorch's timing:

- Constructing a schedule applies its epoch-0 rate at once (it overwrites the groups' lr).
- `step()` is called after `optimizer.step()`: once per epoch for StepLR, MultiStepLR,
  CosineAnnealingLR, LinearLR / LinearWarmup; once per batch for OneCycleLR (its total_steps
  counts batches); `ReduceLROnPlateau.step(metric)` once per validation.
- `get_last_lr()` is the list of rates it last set, one per group; `state_dict()` /
  `load_state_dict()` save and restore its counters (plain Python values) for a checkpoint:
  build the schedule, then load the optimizer's and the schedule's states.

The rates are updated the way PyTorch updates them (the recursive, "chainable" forms of get_lr,
which read the group's current lr), so that they agree with PyTorch's to the last bit or two.
The optimizer's hyperparameter table notices the new rates and uploads them before its next
step.

Warm-up: `LinearWarmup(optimizer, warmup_steps, start_factor=1/3, after=None)` is PyTorch's
`SequentialLR([LinearLR(optimizer, start_factor, 1.0, warmup_steps), after],
milestones=[warmup_steps])` (or the LinearLR alone when `after` is None): the rate climbs
linearly from start_factor * lr towards lr over warmup_steps steps, then `after` (built on the
same optimizer just before) runs from its own epoch 0. `LinearLR` and `SequentialLR` are here
too, with PyTorch's semantics.

Not offered: the deprecated `step(epoch)` argument, `last_epoch` in constructors (restore with
load_state_dict), PyTorch's warnings about calling the schedule before the optimizer.
"""
import copy
import math
from bisect import bisect_right
from collections import Counter

from ..ops._check import shown
from .optimizer import Optimizer

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "CosineAnnealingLR", "LinearLR",
           "SequentialLR", "LinearWarmup", "OneCycleLR", "ReduceLROnPlateau"]


def _check_optimizer(schedule, optimizer):
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{schedule}: {type(optimizer).__name__} is not a cupycnn.optim "
                        f"Optimizer")


def _positive_int(schedule, name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{schedule}: {name} must be a positive integer, got {shown(value)}")
    return value


def _per_group(schedule, name, optimizer, value):
    """One value per group: a list of that length, or one value for every group."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(f"{schedule}: {name} must have one value per parameter group "
                             f"({len(optimizer.param_groups)}), got {len(value)}")
        return list(value)
    return [value] * len(optimizer.param_groups)


class LRScheduler:
    """Base class: PyTorch's LRScheduler. Subclasses implement get_lr() (the rates for
    `last_epoch`, usually from the current ones) and may implement _get_closed_form_lr() (from
    the base rates), which SequentialLR uses to restart a schedule at epoch 0."""

    def __init__(self, optimizer):
        _check_optimizer(type(self).__name__, optimizer)
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = -1
        self._initial_step()

    def _initial_step(self):
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self):
        raise NotImplementedError

    def get_last_lr(self):
        """The learning rate of each group, as this schedule last set it."""
        return list(self._last_lr)

    def step(self):
        """Advance one epoch (or one batch, for OneCycleLR) and set the groups' rates."""
        self._step_count += 1
        self._update_lr()

    def _update_lr(self, epoch=None):
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = epoch
            closed_form = getattr(self, "_get_closed_form_lr", None)
            values = closed_form() if closed_form is not None else self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _current_lrs(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    # ------------------------------------------------------------------------- checkpoints
    _not_saved = ("optimizer",)

    def state_dict(self):
        """The schedule's counters and settings (everything but the optimizer), as plain
        Python values."""
        return {key: copy.deepcopy(value) for key, value in vars(self).items()
                if key not in self._not_saved}

    def load_state_dict(self, state_dict):
        """Restore what state_dict() returned; its keys must be this schedule's."""
        own = set(vars(self)) - set(self._not_saved)
        missing, unexpected = sorted(own - set(state_dict)), sorted(set(state_dict) - own)
        if missing or unexpected:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state is not this "
                             f"schedule's" + (f"; missing: {', '.join(missing)}" if missing else "")
                             + (f"; unexpected: {', '.join(unexpected)}" if unexpected else ""))
        self.__dict__.update(copy.deepcopy(dict(state_dict)))

    def __repr__(self):
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self._last_lr})"


class StepLR(LRScheduler):
    """PyTorch's StepLR: every `step_size` epochs, multiply each group's lr by `gamma`:
    lr_e = base_lr * gamma ** (e // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _positive_int("StepLR", "step_size", step_size)
        self.gamma = gamma
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base * self.gamma ** (self.last_epoch // self.step_size)
                for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """PyTorch's MultiStepLR: multiply each group's lr by `gamma` when the epoch reaches each of
    the `milestones` (a milestone listed twice multiplies twice)."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        milestones = list(milestones)
        for m in milestones:
            if isinstance(m, bool) or not isinstance(m, int) or m < 0:
                raise ValueError(f"MultiStepLR: milestones must be epochs (integers >= 0), got "
                                 f"{milestones!r}")
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch not in self.milestones:
            return self._current_lrs()
        return [group["lr"] * self.gamma ** self.milestones[self.last_epoch]
                for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        milestones = sorted(self.milestones.elements())
        return [base * self.gamma ** bisect_right(milestones, self.last_epoch)
                for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """PyTorch's CosineAnnealingLR: lr_e = eta_min + (base_lr - eta_min) * (1 + cos(pi * e /
    T_max)) / 2, updated recursively from the current lr as PyTorch does (and, past T_max,
    rising again as PyTorch's does)."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = _positive_int("CosineAnnealingLR", "T_max", T_max)
        self.eta_min = eta_min
        super().__init__(optimizer)

    def get_lr(self):
        e, T = self.last_epoch, self.T_max
        if self._is_initial:
            return self._current_lrs()
        if self._step_count == 1 and e > 0:
            return [self.eta_min + (base - self.eta_min) * (1 + math.cos(e * math.pi / T)) / 2
                    for base in self.base_lrs]
        if (e - 1 - T) % (2 * T) == 0:
            return [group["lr"] + (base - self.eta_min) * (1 - math.cos(math.pi / T)) / 2
                    for base, group in zip(self.base_lrs, self.optimizer.param_groups)]
        return [(1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T))
                * (group["lr"] - self.eta_min) + self.eta_min
                for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [self.eta_min + (base - self.eta_min)
                * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base in self.base_lrs]


class LinearLR(LRScheduler):
    """PyTorch's LinearLR: the factor on each group's base lr goes linearly from start_factor
    (epoch 0) to end_factor (epoch total_iters), then stays."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        if not 0 < start_factor <= 1:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1], got {start_factor!r}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: end_factor must be in [0, 1], got {end_factor!r}")
        self.start_factor, self.end_factor = start_factor, end_factor
        self.total_iters = _positive_int("LinearLR", "total_iters", total_iters)
        super().__init__(optimizer)

    def get_lr(self):
        e = self.last_epoch
        if e == 0:
            return [group["lr"] * self.start_factor for group in self.optimizer.param_groups]
        if self._is_initial or e > self.total_iters:
            return self._current_lrs()
        change = self.end_factor - self.start_factor
        return [group["lr"] * (1.0 + change / (self.total_iters * self.start_factor
                                               + (e - 1) * change))
                for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base * (self.start_factor + (self.end_factor - self.start_factor)
                        * min(self.total_iters, self.last_epoch) / self.total_iters)
                for base in self.base_lrs]


class SequentialLR(LRScheduler):
    """PyTorch's SequentialLR: `schedulers[i]` runs from epoch milestones[i - 1] on, restarted
    at its own epoch 0 there (its closed form at 0). The schedules must be built on the same
    optimizer just before."""

    _not_saved = ("optimizer", "_schedulers")

    def __init__(self, optimizer, schedulers, milestones):
        _check_optimizer("SequentialLR", optimizer)
        schedulers, milestones = list(schedulers), list(milestones)
        if not schedulers:
            raise ValueError("SequentialLR: expects at least one schedule, got none")
        for i, s in enumerate(schedulers):
            if isinstance(s, ReduceLROnPlateau):
                raise ValueError(f"SequentialLR: schedule {i} is a ReduceLROnPlateau, which needs "
                                 f"a metric at every step; it cannot be sequenced")
            if not isinstance(s, LRScheduler) or s.optimizer is not optimizer:
                raise ValueError(f"SequentialLR: schedule {i} ({type(s).__name__}) does not "
                                 f"belong to this optimizer")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR: needs one milestone fewer than schedules, got "
                             f"{len(schedulers)} schedules and {len(milestones)} milestones")
        if milestones != sorted(milestones):
            raise ValueError(f"SequentialLR: milestones must be increasing, got {milestones}")
        self._schedulers, self._milestones = schedulers, milestones
        self.optimizer = optimizer
        self.last_epoch = 0
        for group in optimizer.param_groups:          # undo the schedules' initial steps
            group["lr"] = group["initial_lr"]
        self._undo(self)
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def _undo(self, schedule):
        for s in getattr(schedule, "_schedulers", ()):
            if hasattr(s, "_schedulers"):
                self._undo(s)
            else:
                s.last_epoch -= 1

    def step(self):
        self.last_epoch += 1
        index = bisect_right(self._milestones, self.last_epoch)
        schedule = self._schedulers[index]
        if index > 0 and self._milestones[index - 1] == self.last_epoch:
            schedule._update_lr(0)
        else:
            schedule.step()
        self._last_lr = schedule.get_last_lr()

    def state_dict(self):
        state = super().state_dict()
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        inner = state.pop("_schedulers", None)
        if inner is None or len(inner) != len(self._schedulers):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state has "
                             f"{'no' if inner is None else len(inner)} inner schedules, this "
                             f"one {len(self._schedulers)}")
        super().load_state_dict(state)
        for s, saved in zip(self._schedulers, inner):
            s.load_state_dict(saved)


class LinearWarmup(SequentialLR):
    """Linear warm-up, then another schedule: PyTorch's SequentialLR([LinearLR(optimizer,
    start_factor, 1.0, warmup_steps), after], milestones=[warmup_steps]).

    Epochs 0 .. warmup_steps - 1: lr = base_lr * (start_factor + (1 - start_factor) * e /
    warmup_steps); from epoch warmup_steps on, `after` (a schedule built on the same optimizer
    just before this one, or None for a constant lr) runs from its own epoch 0. Step it per
    batch or per epoch, as `after` wants.
    """

    def __init__(self, optimizer, warmup_steps, start_factor=1.0 / 3, after=None):
        self.warmup_steps = _positive_int("LinearWarmup", "warmup_steps", warmup_steps)
        warmup = LinearLR(optimizer, start_factor=start_factor, end_factor=1.0,
                          total_iters=warmup_steps)
        if after is None:
            super().__init__(optimizer, [warmup], [])
        else:
            super().__init__(optimizer, [warmup, after], [warmup_steps])


class OneCycleLR(LRScheduler):
    """PyTorch's OneCycleLR (Smith's 1cycle policy), stepped once per batch: the lr rises from
    max_lr / div_factor to max_lr over the first pct_start of total_steps, then anneals to
    max_lr / div_factor / final_div_factor ("cos" or "linear"); three_phase adds PyTorch's
    symmetric descent phase. With cycle_momentum (PyTorch's default) the momentum (SGD) or beta1
    (Adam, AdamW) cycles the other way between max_momentum and base_momentum. Stepping past
    total_steps is an error."""

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85,
                 max_momentum=0.95, div_factor=25.0, final_div_factor=1e4, three_phase=False):
        name = "OneCycleLR"
        _check_optimizer(name, optimizer)
        if total_steps is not None:
            self.total_steps = _positive_int(name, "total_steps", total_steps)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = _positive_int(name, "epochs", epochs) * \
                _positive_int(name, "steps_per_epoch", steps_per_epoch)
        else:
            raise ValueError(f"{name}: give total_steps, or epochs and steps_per_epoch")
        if not 0 <= pct_start <= 1:
            raise ValueError(f"{name}: pct_start must be in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"{name}: anneal_strategy must be 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        up_end = float(pct_start * self.total_steps) - 1
        if three_phase:
            self._phases = [
                (up_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (float(2 * pct_start * self.total_steps) - 2, "max_lr", "initial_lr",
                 "base_momentum", "max_momentum"),
                (self.total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum")]
        else:
            self._phases = [
                (up_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (self.total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")]
        for group, peak in zip(optimizer.param_groups,
                               _per_group(name, "max_lr", optimizer, max_lr)):
            group["initial_lr"] = peak / div_factor
            group["max_lr"] = peak
            group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError(f"{name}: cycle_momentum needs an optimizer with momentum or "
                                 f"betas")
            self.use_beta1 = "betas" in optimizer.defaults
            for group, high, low in zip(
                    optimizer.param_groups,
                    _per_group(name, "max_momentum", optimizer, max_momentum),
                    _per_group(name, "base_momentum", optimizer, base_momentum)):
                self._set_momentum(group, high)
                group["max_momentum"], group["base_momentum"] = high, low
        super().__init__(optimizer)

    def _set_momentum(self, group, value):
        if self.use_beta1:
            group["betas"] = (value, *group["betas"][1:])
        else:
            group["momentum"] = value

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {step} times; total_steps is "
                             f"{self.total_steps}")
        lrs = []
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, (end_step, lr_from, lr_to, m_from, m_to) in enumerate(self._phases):
                if step <= end_step or i == len(self._phases) - 1:
                    pct = (step - start_step) / (end_step - start_step)
                    lr = self._anneal(group[lr_from], group[lr_to], pct)
                    if self.cycle_momentum:
                        momentum = self._anneal(group[m_from], group[m_to], pct)
                    break
                start_step = end_step
            lrs.append(lr)
            if self.cycle_momentum:
                self._set_momentum(group, momentum)
        return lrs


class ReduceLROnPlateau(LRScheduler):
    """PyTorch's ReduceLROnPlateau: `step(metric)` after each validation; when the metric has
    not improved (by `threshold`, relative or absolute, in `mode` "min" or "max") for more than
    `patience` calls, every group's lr is multiplied by `factor` (not below its `min_lr`; a
    change smaller than `eps` is skipped), and the next `cooldown` calls are ignored."""

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0, eps=1e-8):
        name = "ReduceLROnPlateau"
        _check_optimizer(name, optimizer)
        if not factor < 1.0:
            raise ValueError(f"{name}: factor must be < 1.0, got {factor!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"{name}: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"{name}: threshold_mode must be 'rel' or 'abs', got "
                             f"{threshold_mode!r}")
        for what, value in (("patience", patience), ("cooldown", cooldown)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: {what} must be an integer >= 0, got {shown(value)}")
        self.optimizer = optimizer
        self.factor, self.patience, self.cooldown, self.eps = factor, patience, cooldown, eps
        self.mode, self.threshold, self.threshold_mode = mode, threshold, threshold_mode
        self.min_lrs = _per_group(name, "min_lr", optimizer, min_lr)
        self.last_epoch = 0
        self._last_lr = self._current_lrs()
        self.best = math.inf if mode == "min" else -math.inf
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    @property
    def in_cooldown(self):
        return self.cooldown_counter > 0

    def _is_better(self, a, best):
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel"
                        else best - self.threshold)
        return a > (best * (self.threshold + 1.0) if self.threshold_mode == "rel"
                    else best + self.threshold)

    def step(self, metrics):
        """Record one value of the monitored metric (a number or a 0-d array)."""
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs):
                old = float(group["lr"])
                new = max(old * self.factor, min_lr)
                if old - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self._current_lrs()
