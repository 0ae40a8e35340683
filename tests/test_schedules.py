"""cupycnn.optim's learning-rate schedules against torch.optim.lr_scheduler over many steps,
per parameter group: StepLR, MultiStepLR, CosineAnnealingLR (past T_max too), LinearLR,
LinearWarmup (= SequentialLR of LinearLR and another schedule), OneCycleLR (momentum and beta1
cycling, three phases, linear annealing) and ReduceLROnPlateau (patience, cooldown, min_lr,
both modes and threshold modes); state-dict round trips; a schedule driving the fused kernel."""
import warnings

import numpy as np
import pytest
import torch

import cupycnn
from cupycnn import optim
from cupycnn.layers import Dense
from helpers import assert_matches

STEPS = 60


def _pair(kind="sgd", group_lrs=(0.1, 0.03), **options):
    """Our optimizer and torch's over two parameter groups with different lrs."""
    cupycnn.use("numpy")
    cupycnn.manual_seed(0)
    a, b = Dense(3, 2), Dense(2, 2)
    ours_cls, torch_cls = {"sgd": (optim.SGD, torch.optim.SGD),
                           "adam": (optim.Adam, torch.optim.Adam),
                           "adamw": (optim.AdamW, torch.optim.AdamW)}[kind]
    ours = ours_cls([{"params": a.parameters(), "lr": group_lrs[0]},
                     {"params": b.parameters(), "lr": group_lrs[1]}], **options)
    tensors = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    theirs = torch_cls([{"params": [tensors[0]], "lr": group_lrs[0]},
                        {"params": [tensors[1]], "lr": group_lrs[1]}], **options)
    return ours, theirs


def _same(ours, theirs, what):
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0, err_msg=what)


def _compare_groups(ours, theirs, epoch):
    for key in ("lr", "momentum", "betas"):
        if key in theirs.param_groups[0]:
            _same(np.array([g[key] for g in ours.param_groups], dtype=float),
                  np.array([g[key] for g in theirs.param_groups], dtype=float),
                  f"{key} at epoch {epoch}")


def _follow(ours_schedule, torch_schedule, ours, theirs, steps=STEPS, metrics=None):
    """Step both `steps` times (the optimizer first, as PyTorch wants); rates must agree at
    construction and after every step."""
    _same(ours_schedule.get_last_lr(), torch_schedule.get_last_lr(), "initial lr")
    _compare_groups(ours, theirs, 0)
    for epoch in range(1, steps + 1):
        theirs.step()
        if metrics is None:
            ours_schedule.step()
            torch_schedule.step()
        else:
            ours_schedule.step(metrics[epoch - 1])
            torch_schedule.step(metrics[epoch - 1])
        _same(ours_schedule.get_last_lr(), torch_schedule.get_last_lr(), f"lr at epoch {epoch}")
        _compare_groups(ours, theirs, epoch)


SCHEDULES = {
    "step": lambda m, o: m.StepLR(o, step_size=7, gamma=0.5),
    "multistep": lambda m, o: m.MultiStepLR(o, milestones=[3, 10, 10, 31], gamma=0.3),
    "cosine": lambda m, o: m.CosineAnnealingLR(o, T_max=25, eta_min=1e-3),
    "cosine-default": lambda m, o: m.CosineAnnealingLR(o, T_max=60),
    "linear": lambda m, o: m.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=20),
    "onecycle-cos": lambda m, o: m.OneCycleLR(o, max_lr=[0.5, 0.2], total_steps=STEPS),
    "onecycle-linear-three-phase": lambda m, o: m.OneCycleLR(
        o, max_lr=1.0, total_steps=STEPS + 5, pct_start=0.25, anneal_strategy="linear",
        three_phase=True, div_factor=10.0, final_div_factor=100.0),
    "onecycle-no-momentum": lambda m, o: m.OneCycleLR(o, max_lr=0.3, epochs=6,
                                                      steps_per_epoch=10, cycle_momentum=False),
}


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_matches_torch(name, kind):
    ours, theirs = _pair(kind, **({"momentum": 0.9} if kind == "sgd" else {}))
    ours_schedule = SCHEDULES[name](optim, ours)
    torch_schedule = SCHEDULES[name](torch.optim.lr_scheduler, theirs)
    _follow(ours_schedule, torch_schedule, ours, theirs)


@pytest.mark.parametrize("after", [None, "cosine", "step", "onecycle-cos"])
def test_linear_warmup_is_torchs_sequential_linear_lr(after):
    ours, theirs = _pair("adamw")
    torch_sched = torch.optim.lr_scheduler
    ours_after = SCHEDULES[after](optim, ours) if after else None
    torch_after = SCHEDULES[after](torch_sched, theirs) if after else None
    warmup = torch_sched.LinearLR(theirs, start_factor=0.05, end_factor=1.0, total_iters=8)
    torch_schedule = warmup if after is None else \
        torch_sched.SequentialLR(theirs, [warmup, torch_after], milestones=[8])
    ours_schedule = optim.LinearWarmup(ours, 8, start_factor=0.05, after=ours_after)
    steps = STEPS - 8 if after and after.startswith("onecycle") else STEPS
    _follow(ours_schedule, torch_schedule, ours, theirs, steps=steps)


def test_sequential_lr_matches_torch():
    ours, theirs = _pair("sgd", momentum=0.9)
    mine = [optim.StepLR(ours, 3, 0.5), optim.CosineAnnealingLR(ours, 10),
            optim.MultiStepLR(ours, [2, 4])]
    torch_sched = torch.optim.lr_scheduler
    ref = [torch_sched.StepLR(theirs, 3, 0.5), torch_sched.CosineAnnealingLR(theirs, 10),
           torch_sched.MultiStepLR(theirs, [2, 4])]
    _follow(optim.SequentialLR(ours, mine, [5, 17]),
            torch_sched.SequentialLR(theirs, ref, milestones=[5, 17]), ours, theirs, steps=30)


# Metrics that improve, stall, improve by less than the threshold, and get worse.
PLATEAU_METRICS = [1.0, 0.9, 0.9, 0.9, 0.95, 0.8, 0.79995, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7,
                   0.69, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7,
                   0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.5, 0.5, 0.5, 0.5, 0.5]


@pytest.mark.parametrize("options", [
    dict(patience=2),
    dict(patience=1, cooldown=2, factor=0.5, min_lr=[1e-3, 2e-3]),
    dict(patience=0, cooldown=1, factor=0.3, min_lr=5e-3, threshold=0.01, threshold_mode="abs"),
    dict(mode="max", patience=1, threshold=1e-3),
    dict(mode="max", patience=3, cooldown=3, threshold_mode="abs", threshold=0.05),
], ids=["patience", "cooldown-min-lr-per-group", "abs-min-lr", "max", "max-abs-cooldown"])
def test_reduce_lr_on_plateau_matches_torch(options):
    ours, theirs = _pair("sgd")
    metrics = PLATEAU_METRICS if options.get("mode") != "max" else [-m for m in PLATEAU_METRICS]
    ours_schedule = optim.ReduceLROnPlateau(ours, **options)
    torch_schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, **options)
    _follow(ours_schedule, torch_schedule, ours, theirs, steps=len(metrics), metrics=metrics)
    assert ours_schedule.get_last_lr()[0] < 0.1       # it did reduce


def test_reduce_lr_on_plateau_stops_at_min_lr():
    ours, _ = _pair("sgd")
    schedule = optim.ReduceLROnPlateau(ours, patience=0, factor=0.1, min_lr=[0.002, 0.001])
    for _ in range(10):
        schedule.step(1.0)
    assert schedule.get_last_lr() == [0.002, 0.001]


@pytest.mark.parametrize("name", ["step", "cosine", "onecycle-cos", "multistep"])
def test_schedule_state_dict_round_trip(name):
    ours, _ = _pair("adam")
    schedule = SCHEDULES[name](optim, ours)
    for _ in range(13):
        schedule.step()
    saved = schedule.state_dict()
    opt_saved = ours.state_dict()
    expected = []
    for _ in range(10):
        schedule.step()
        expected.append(schedule.get_last_lr())
    resumed_opt, _ = _pair("adam")
    resumed = SCHEDULES[name](optim, resumed_opt)
    resumed_opt.load_state_dict(opt_saved)
    resumed.load_state_dict(saved)
    got = []
    for _ in range(10):
        resumed.step()
        got.append(resumed.get_last_lr())
    assert got == expected


def test_warmup_and_plateau_state_dict_round_trip():
    ours, _ = _pair("sgd")
    schedule = optim.LinearWarmup(ours, 5, after=optim.CosineAnnealingLR(ours, 20))
    for _ in range(7):
        schedule.step()
    saved, opt_saved = schedule.state_dict(), ours.state_dict()
    resumed_opt, _ = _pair("sgd")
    resumed = optim.LinearWarmup(resumed_opt, 5, after=optim.CosineAnnealingLR(resumed_opt, 20))
    resumed_opt.load_state_dict(opt_saved)
    resumed.load_state_dict(saved)
    for _ in range(5):
        schedule.step()
        resumed.step()
        assert resumed.get_last_lr() == schedule.get_last_lr()
    plateau = optim.ReduceLROnPlateau(ours, patience=1)
    for m in (1.0, 1.0, 1.0):
        plateau.step(m)
    copy = optim.ReduceLROnPlateau(resumed_opt, patience=1)
    copy.load_state_dict(plateau.state_dict())
    assert (copy.best, copy.num_bad_epochs, copy.last_epoch) == (1.0, 0, 3)
    with pytest.raises(ValueError, match="StepLR.load_state_dict: the state is not this "
                                         "schedule's; missing: .*gamma, step_size; unexpected: "
                                         "T_max, best"):
        optim.StepLR(ours, 3).load_state_dict(plateau.state_dict() | {"T_max": 1})


def test_schedule_drives_the_fused_kernel(kernel_device, rng):
    """OneCycleLR changes lr and beta1 of Adam every batch: the kernel sees the new values
    (the hyperparameter table is uploaded again) and matches torch."""
    cupycnn.manual_seed(0)
    layer = Dense(6, 4)
    params = layer.parameters()
    tensors = [torch.tensor(cupycnn.asnumpy(p.data).astype(np.float64), requires_grad=True)
               for p in params]
    ours = optim.Adam([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.1}])
    theirs = torch.optim.Adam([{"params": tensors[:1]}, {"params": tensors[1:],
                                                         "weight_decay": 0.1}])
    ours_schedule = optim.OneCycleLR(ours, max_lr=0.05, total_steps=8)
    torch_schedule = torch.optim.lr_scheduler.OneCycleLR(theirs, max_lr=0.05, total_steps=8)
    for _ in range(8):
        for p, t in zip(params, tensors):
            g = rng.standard_normal(p.shape).astype(np.float32)
            p.grad[...] = cupycnn.asarray(g)
            t.grad = torch.tensor(g.astype(np.float64))
        ours.step()
        theirs.step()
        ours_schedule.step()
        torch_schedule.step()
    assert ours.table_uploads == 8
    for p, t in zip(params, tensors):
        assert_matches(p.data, t.detach().numpy(), p.name)


@pytest.mark.parametrize("make, error, message", [
    (lambda o: optim.StepLR(o, 0), ValueError, "StepLR: step_size must be a positive integer"),
    (lambda o: optim.CosineAnnealingLR(o, 0), ValueError, "T_max must be a positive integer"),
    (lambda o: optim.MultiStepLR(o, [2, -1]), ValueError, "milestones must be epochs"),
    (lambda o: optim.LinearLR(o, start_factor=0), ValueError, r"start_factor must be in \(0, 1\]"),
    (lambda o: optim.LinearWarmup(o, 0), ValueError, "warmup_steps must be a positive integer"),
    (lambda o: optim.OneCycleLR(o, 0.1), ValueError, "give total_steps, or epochs and "
                                                     "steps_per_epoch"),
    (lambda o: optim.OneCycleLR(o, [0.1], total_steps=5), ValueError,
     r"max_lr must have one value per parameter group \(2\), got 1"),
    (lambda o: optim.OneCycleLR(o, 0.1, total_steps=5, anneal_strategy="exp"), ValueError,
     "anneal_strategy must be 'cos' or 'linear'"),
    (lambda o: optim.ReduceLROnPlateau(o, factor=1.0), ValueError, "factor must be < 1.0"),
    (lambda o: optim.ReduceLROnPlateau(o, mode="mid"), ValueError, "mode must be 'min' or 'max'"),
    (lambda o: optim.ReduceLROnPlateau(o, min_lr=[0.1]), ValueError,
     "min_lr must have one value per parameter group"),
    (lambda o: optim.StepLR(object(), 3), TypeError, "object is not a cupycnn.optim Optimizer"),
    (lambda o: optim.SequentialLR(o, [optim.ReduceLROnPlateau(o)], []), ValueError,
     "schedule 0 is a ReduceLROnPlateau"),
])
def test_bad_schedule_arguments(make, error, message):
    ours, _ = _pair("sgd")
    with pytest.raises(error, match=message):
        make(ours)


def test_one_cycle_refuses_to_step_past_total_steps():
    ours, _ = _pair("sgd")
    schedule = optim.OneCycleLR(ours, 0.1, total_steps=3)
    for _ in range(3):
        schedule.step()
    with pytest.raises(ValueError, match="tried to step 4 times; total_steps is 3"):
        schedule.step()


def test_importable_as_lr_scheduler():
    from cupycnn.optim import lr_scheduler
    assert lr_scheduler.OneCycleLR is optim.OneCycleLR
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours, _ = _pair("sgd")
        lr_scheduler.StepLR(ours, 2).step()


def test_linear_warmup_climbs_linearly_to_the_base_rate():
    ours, _ = _pair("sgd", group_lrs=(0.4, 0.2))
    schedule = optim.LinearWarmup(ours, 4, start_factor=0.25)
    lrs = [schedule.get_last_lr()]
    for _ in range(6):
        schedule.step()
        lrs.append(schedule.get_last_lr())
    factors = [0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(lrs, [[0.4 * f, 0.2 * f] for f in factors], rtol=1e-12)
