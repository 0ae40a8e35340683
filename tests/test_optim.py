"""cupycnn.optim's SGD, Adam and AdamW against torch.optim, step after step on the same
gradients: on numpy in float64 (to rounding), and on every kernel device in float32 (one fused
launch per step, relative error < 1e-5 against torch in float64). L1, which torch lacks,
against a NumPy transcription. Flat buffers, one launch per step, uploads of the
hyperparameter table, state dicts (ours and torch's), and bad input."""
import numpy as np
import pytest
import torch

import cupycnn
from cupycnn import optim, runtime
from cupycnn.layers import Dense
from helpers import DEVICES, assert_matches

STEPS = 5

# (our class, torch class, keyword arguments of both)
CASES = {
    "sgd": (optim.SGD, torch.optim.SGD, dict(lr=0.1)),
    "sgd-momentum": (optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    "sgd-dampening-wd": (optim.SGD, torch.optim.SGD,
                         dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2)),
    "sgd-nesterov-wd": (optim.SGD, torch.optim.SGD,
                        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-2)),
    "adam": (optim.Adam, torch.optim.Adam, dict(lr=1e-2)),
    "adam-wd": (optim.Adam, torch.optim.Adam,
                dict(lr=3e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": (optim.AdamW, torch.optim.AdamW, dict(lr=1e-2)),
    "adamw-wd0": (optim.AdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.0)),
    "adamw-wd": (optim.AdamW, torch.optim.AdamW, dict(lr=2e-2, betas=(0.5, 0.9), weight_decay=0.3)),
}
STATE_KEYS = {optim.SGD: ("momentum_buffer",), optim.Adam: ("exp_avg", "exp_avg_sq"),
              optim.AdamW: ("exp_avg", "exp_avg_sq")}


def _model(dtype=np.float32):
    """Three Dense layers: six tensors (odd sizes, biases), in one flat buffer."""
    cupycnn.manual_seed(3)
    layers = [Dense(7, 5), Dense(5, 6), Dense(6, 3)]
    if dtype != np.float32:
        for layer in layers:
            layer.to(dtype)
    return layers, [p for layer in layers for p in layer.parameters()]


def _torch_copy(params):
    return [torch.tensor(cupycnn.asnumpy(p.data).astype(np.float64), requires_grad=True)
            for p in params]


def _split_groups(params, weight_options, bias_options):
    """Weights in one group, biases in another (biases listed first, to check the layout)."""
    weights = [p for p in params if p.name.endswith("weight")]
    biases = [p for p in params if p.name.endswith("bias")]
    return [dict(params=biases, **bias_options), dict(params=weights, **weight_options)], \
        biases + weights


def _set_gradients(rng, params, tensors, dtype):
    for p, t in zip(params, tensors):
        g = rng.standard_normal(p.shape).astype(dtype)
        p.grad[...] = cupycnn.asarray(g)
        t.grad = torch.tensor(g.astype(np.float64))


def _compare(ours, theirs, ordered, tensors, check):
    our_state = ours.state_dict()["state"]
    for k, (p, t) in enumerate(zip(ordered, tensors)):
        check(p.data, t.detach().numpy(), f"{p.name}")
        state = theirs.state[t]
        assert set(our_state.get(k, {})) == set(state), (k, set(state))
        for key in STATE_KEYS[type(ours)]:
            if key not in state:
                continue
            start, size = ours.param_segments[k]
            mine = cupycnn.asnumpy(ours.flat_state[key])[start:start + size].reshape(p.shape)
            check(mine, state[key].numpy(), f"{p.name} {key}")


def _tight(got, expected, name):
    np.testing.assert_allclose(cupycnn.asnumpy(got), expected, rtol=1e-12, atol=1e-14,
                               err_msg=name)


def _run_against_torch(rng, case, dtype, check, groups=None, steps=STEPS):
    ours_cls, torch_cls, options = CASES[case]
    _, params = _model(dtype)
    ordered = params
    if groups is not None:
        spec, ordered = _split_groups(params, *groups)
    tensors = _torch_copy(ordered)
    ours = ours_cls(spec if groups else params, **options)
    if groups:
        torch_spec = [dict(g, params=[tensors[ordered.index(p)] for p in g["params"]])
                      for g in spec]
        theirs = torch_cls(torch_spec, **options)
    else:
        theirs = torch_cls(tensors, **options)
    for _ in range(steps):
        _set_gradients(rng, ordered, tensors, dtype)
        ours.step()
        theirs.step()
    _compare(ours, theirs, ordered, tensors, check)
    return ours


@pytest.mark.parametrize("case", CASES)
def test_matches_torch_on_numpy_in_float64(numpy_device, rng, case):
    _run_against_torch(rng, case, np.float64, _tight)


@pytest.mark.parametrize("case", CASES)
def test_fused_kernel_matches_torch(kernel_device, rng, case):
    _run_against_torch(rng, case, np.float32, assert_matches)


GROUP_CASES = {
    "sgd": (dict(lr=0.1, weight_decay=1e-2), dict(lr=0.02, weight_decay=0, momentum=0.5)),
    "adam": (dict(lr=1e-2, weight_decay=0.1), dict(lr=3e-2, weight_decay=0, betas=(0.5, 0.9))),
    "adamw": (dict(weight_decay=0.2), dict(lr=5e-3, weight_decay=0)),
}


@pytest.mark.parametrize("case", GROUP_CASES)
def test_parameter_groups_match_torch(numpy_device, rng, case):
    ours = _run_against_torch(rng, case, np.float64, _tight, groups=GROUP_CASES[case])
    for key, value in GROUP_CASES[case][1].items():      # the biases' group, listed first
        assert ours.param_groups[0][key] == value


@pytest.mark.parametrize("case", ["sgd", "adam"])
def test_parameter_groups_with_the_fused_kernel(kernel_device, rng, case):
    _run_against_torch(rng, case, np.float32, assert_matches, groups=GROUP_CASES[case])


# ----------------------------------------------------------------------------------- L1

def _numpy_sgd(w, grads, lr, momentum, dampening, nesterov, wd, l1):
    """torch.optim.SGD's algorithm per tensor, in float64, with L1 added to the gradient."""
    buf = None
    for grad in grads:
        g = grad + wd * w + l1 * np.sign(w)
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        w = w - lr * g
    return w


def _numpy_adam(w, grads, lr, betas, eps, wd, l1, decoupled):
    """torch.optim.Adam / AdamW's algorithm per tensor, in float64, with L1."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, grad in enumerate(grads, start=1):
        g = grad + l1 * np.sign(w)
        if decoupled:
            w = w * (1 - lr * wd)
        else:
            g = g + wd * w
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        denom = np.sqrt(v) / np.sqrt(1 - betas[1] ** t) + eps
        w = w - lr / (1 - betas[0] ** t) * m / denom
    return w


L1_CASES = {
    "sgd": (optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
            lambda w, gs, o, l1: _numpy_sgd(w, gs, o["lr"], o["momentum"], 0, False,
                                            o["weight_decay"], l1)),
    "sgd-nesterov": (optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True),
                     lambda w, gs, o, l1: _numpy_sgd(w, gs, o["lr"], 0.9, 0, True, 0, l1)),
    "adam": (optim.Adam, dict(lr=1e-2, weight_decay=0.1),
             lambda w, gs, o, l1: _numpy_adam(w, gs, o["lr"], (0.9, 0.999), 1e-8,
                                              o["weight_decay"], l1, False)),
    "adamw": (optim.AdamW, dict(lr=1e-2, weight_decay=0.1),
              lambda w, gs, o, l1: _numpy_adam(w, gs, o["lr"], (0.9, 0.999), 1e-8,
                                               o["weight_decay"], l1, True)),
}


def _run_l1(rng, case, dtype):
    """L1 on the weights (their own group), none on the biases: against the transcription,
    tensor by tensor."""
    cls, options, transcription = L1_CASES[case]
    _, params = _model(dtype)
    l1 = 3e-2
    weights = [p for p in params if p.name.endswith("weight")]
    biases = [p for p in params if p.name.endswith("bias")]
    initial = [cupycnn.asnumpy(p.data).astype(np.float64) for p in params]
    grads = [[rng.standard_normal(p.shape).astype(dtype) for _ in range(STEPS)] for p in params]
    opt = cls([dict(params=weights, l1=l1), dict(params=biases)], **options)
    assert opt.param_groups[1]["l1"] == 0
    for s in range(STEPS):
        for p, g in zip(params, grads):
            p.grad[...] = cupycnn.asarray(g[s])
        opt.step()
    for p, w, g in zip(params, initial, grads):
        expected = transcription(w, [step.astype(np.float64) for step in g], options,
                                 l1 if p.name.endswith("weight") else 0.0)
        yield p, expected


@pytest.mark.parametrize("case", L1_CASES)
def test_l1_per_group_matches_a_numpy_transcription(numpy_device, rng, case):
    for p, expected in _run_l1(rng, case, np.float64):
        _tight(p.data, expected, p.name)


@pytest.mark.parametrize("case", ["sgd", "adamw"])
def test_l1_with_the_fused_kernel(kernel_device, rng, case):
    for p, expected in _run_l1(rng, case, np.float32):
        assert_matches(p.data, expected, p.name)


def test_l1_changes_the_result(numpy_device, rng):
    """The L1 term is really applied (the transcription test would also pass if both ignored
    it): with l1 the weights move towards zero by more than without."""
    ends = []
    for l1 in (0.0, 0.5):
        _, params = _model(np.float64)
        opt = optim.SGD(params, lr=0.1, l1=l1)
        opt.zero_grad()
        opt.step()
        ends.append(np.abs(cupycnn.asnumpy(opt.flat_params)).sum())
    assert ends[1] < ends[0] - 1.0


# ----------------------------------------------------------------------- grad_scale

@pytest.mark.parametrize("cls", [optim.SGD, optim.AdamW])
def test_grad_scale_multiplies_the_gradients(kernel_device, rng, cls):
    """Gradients summed over 4 ranks with grad_scale = 1/4 step exactly as their mean."""
    results = []
    for scale in (1.0, 0.25):
        _, params = _model()
        opt = cls(params, lr=0.05, weight_decay=1e-2, **({"momentum": 0.9} if cls is optim.SGD
                                                          else {}))
        opt.grad_scale = scale
        local = np.random.default_rng(5)
        for _ in range(3):
            for p in params:
                p.grad[...] = cupycnn.asarray(
                    local.standard_normal(p.shape).astype(np.float32) / scale)
            opt.step()
        results.append(cupycnn.asnumpy(opt.flat_params).astype(np.float64))
    assert_matches(results[1], results[0])


# ------------------------------------------------------- flat buffers, launches, uploads

def test_flat_buffers_hold_every_parameter_and_gradient(numpy_device, rng):
    layers, params = _model()
    before = [p.data.copy() for p in params]
    opt = optim.Adam(params)
    assert len(opt.param_segments) == len(params)
    for (start, size), p, old in zip(opt.param_segments, opt.params, before):
        assert start % optim.SEGMENT_ALIGN == 0 and size == p.size
        assert np.shares_memory(p.data, opt.flat_params)
        assert np.shares_memory(p.grad, opt.flat_grads)
        np.testing.assert_array_equal(opt.flat_params[start:start + size], old.reshape(-1))
    assert opt.flat_params.size % optim.SEGMENT_ALIGN == 0
    padding = np.ones(opt.flat_params.size, bool)
    for start, size in opt.param_segments:
        padding[start:start + size] = False
    assert padding.any() and not opt.flat_params[padding].any()
    # The layers keep working through the views: backward writes into the flat gradients.
    x = rng.standard_normal((4, 7)).astype(np.float32)
    y = layers[2].forward(layers[1].forward(layers[0].forward(x)))
    layers[0].backward(layers[1].backward(layers[2].backward(np.ones_like(y))))
    start, size = opt.param_segments[0]
    np.testing.assert_array_equal(opt.flat_grads[start:start + size],
                                  layers[0].grads["weight"].reshape(-1))
    assert opt.flat_grads[~padding].any()
    opt.zero_grad()
    assert not opt.flat_grads.any()


def test_groups_are_laid_out_in_group_order(numpy_device):
    _, params = _model()
    spec, ordered = _split_groups(params, {}, {"lr": 0.5})
    opt = optim.SGD(spec, lr=0.1)
    assert [p.name for p in opt.params] == [p.name for p in ordered]
    starts = [start for start, _ in opt.param_segments]
    assert starts == sorted(starts)
    assert opt.state_dict()["param_groups"][0]["params"] == [0, 1, 2]


def _count_launches(monkeypatch):
    launches = []
    original = runtime.Kernel.__call__

    def counting(self, grid, block, args, shared_mem=0):
        launches.append((self.source_name, self.name))
        return original(self, grid, block, args, shared_mem)
    monkeypatch.setattr(runtime.Kernel, "__call__", counting)
    return launches


@pytest.mark.parametrize("cls, kernel", [(optim.SGD, "sgd_step"), (optim.AdamW, "adam_step")])
def test_one_launch_per_step_whatever_the_groups(kernel_device, monkeypatch, cls, kernel):
    _, params = _model()
    spec, _ = _split_groups(params, {"lr": 0.1}, {"lr": 0.2, "weight_decay": 0})
    opt = cls(spec, lr=0.05, **({"momentum": 0.9} if cls is optim.SGD else {}))
    launches = _count_launches(monkeypatch)
    for steps in (1, 2, 3):
        opt.step()
        assert launches == [("optim.cu", kernel)] * steps


def test_hyperparameter_table_is_uploaded_only_when_it_changes(kernel_device):
    _, params = _model()
    opt = optim.Adam(params, lr=0.1)
    schedule = optim.StepLR(opt, step_size=2, gamma=0.5)
    uploads = []
    for _ in range(5):
        opt.step()
        schedule.step()
        uploads.append(opt.table_uploads)
    # lr changes after steps 2 and 4 (epochs 2, 4): uploaded before steps 3 and 5.
    assert uploads == [1, 1, 2, 2, 3]
    sgd = optim.SGD(params, lr=0.1, momentum=0.9)
    counts = []
    for _ in range(3):
        sgd.step()
        counts.append(sgd.table_uploads)
    assert counts == [1, 2, 2]          # the groups' momentum buffers start after step 1


def test_a_rebound_parameter_is_reported(numpy_device):
    _, params = _model()
    first = optim.SGD(params, lr=0.1)
    optim.SGD(params, lr=0.1)           # moves the parameters into its own buffers
    with pytest.raises(RuntimeError, match=r"SGD: parameter weight no longer lives in this "
                                           r"optimizer's flat buffers"):
        first.step()


def test_closure_is_called_and_its_loss_returned(numpy_device):
    _, params = _model()
    opt = optim.SGD(params)
    assert opt.step(lambda: 1.5) == 1.5 and opt.step() is None


# ------------------------------------------------------------------------- state dicts

def _train(opt, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad[...] = cupycnn.asarray(g)
        opt.step()


def _resume_case(cls, options, device, rng, groups=False):
    cupycnn.use(device)
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in _model()[1]]
             for _ in range(6)]

    def build():
        _, params = _model()
        spec = params if not groups else _split_groups(params, {"l1": 1e-3}, {"lr": 0.02})[0]
        opt = cls(spec, **options)
        return params, opt, optim.StepLR(opt, step_size=2, gamma=0.5)

    params, straight, schedule = build()
    for s in range(6):
        _train(straight, params, grads[s:s + 1])
        schedule.step()
    params_a, first, schedule_a = build()
    for s in range(3):
        _train(first, params_a, grads[s:s + 1])
        schedule_a.step()
    saved = (first.state_dict(), schedule_a.state_dict(),
             [cupycnn.asnumpy(p.data).copy() for p in params_a])
    params_b, resumed, schedule_b = build()
    resumed.load_state_dict(saved[0])
    schedule_b.load_state_dict(saved[1])
    for p, value in zip(params_b, saved[2]):
        p.data[...] = cupycnn.asarray(value)
    for s in range(3, 6):
        _train(resumed, params_b, grads[s:s + 1])
        schedule_b.step()
    for p, q in zip(params, params_b):
        np.testing.assert_array_equal(cupycnn.asnumpy(p.data), cupycnn.asnumpy(q.data))
    for key in straight.flat_state:
        np.testing.assert_array_equal(cupycnn.asnumpy(straight.flat_state[key]),
                                      cupycnn.asnumpy(resumed.flat_state[key]))
    assert schedule.get_last_lr() == schedule_b.get_last_lr()


@pytest.mark.parametrize("cls, options", [
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (optim.Adam, dict(lr=1e-2, weight_decay=1e-2)),
    (optim.AdamW, dict(lr=1e-2))], ids=["sgd", "adam", "adamw"])
@pytest.mark.parametrize("device", DEVICES)
def test_a_resumed_optimizer_continues_exactly(rng, cls, options, device):
    _resume_case(cls, options, device, rng, groups=(cls is optim.SGD))


def test_state_dict_has_pytorchs_structure(numpy_device, rng):
    _, params = _model()
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    assert opt.state_dict()["state"] == {}               # no buffer before the first step
    opt.step()
    state = opt.state_dict()
    assert set(state) == {"state", "param_groups"}
    assert sorted(state["state"]) == list(range(len(params)))
    assert state["state"][0]["momentum_buffer"].shape == params[0].shape
    group = state["param_groups"][0]
    assert group["params"] == list(range(len(params)))
    assert {k: group[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov",
                                  "l1")} == dict(lr=0.1, momentum=0.9, dampening=0,
                                                 weight_decay=0, nesterov=False, l1=0)
    adam = optim.Adam(params)
    adam.step()
    entry = adam.state_dict()["state"][3]
    assert set(entry) == {"step", "exp_avg", "exp_avg_sq"}
    assert entry["step"].dtype == np.float32 and entry["step"].shape == () and entry["step"] == 1


@pytest.mark.parametrize("case", ["sgd-nesterov-wd", "adam-wd", "adamw-wd"])
def test_torch_state_dict_loads_and_continues_as_torch(numpy_device, rng, case):
    """A torch.optim state dict (tensors turned into NumPy arrays) resumes in cupycnn, and
    cupycnn's state dict (arrays turned into tensors) resumes in torch."""
    ours_cls, torch_cls, options = CASES[case]
    _, params = _model(np.float64)
    tensors = _torch_copy(params)
    theirs = torch_cls(tensors, **options)
    for _ in range(3):
        _set_gradients(rng, params, tensors, np.float64)
        theirs.step()
    for p, t in zip(params, tensors):
        p.data[...] = t.detach().numpy()
    saved = theirs.state_dict()
    as_numpy = {"state": {k: {n: v.numpy() for n, v in s.items()}
                          for k, s in saved["state"].items()},
                "param_groups": saved["param_groups"]}
    ours = ours_cls(params, lr=123.0)                  # hyperparameters come from the state
    ours.load_state_dict(as_numpy)
    assert ours.param_groups[0]["lr"] == options["lr"]
    for _ in range(2):
        _set_gradients(rng, params, tensors, np.float64)
        ours.step()
        theirs.step()
    _compare(ours, theirs, params, tensors, _tight)

    back = ours.state_dict()
    restored = torch_cls(_torch_copy(params), lr=7.0)
    restored.load_state_dict({"state": {k: {n: torch.tensor(v) for n, v in s.items()}
                                        for k, s in back["state"].items()},
                              "param_groups": back["param_groups"]})
    assert restored.param_groups[0]["lr"] == options["lr"]
    for key in STATE_KEYS[ours_cls]:
        torch_state = restored.state_dict()["state"][2][key].numpy()
        start, size = ours.param_segments[2]
        np.testing.assert_array_equal(ours.flat_state[key][start:start + size],
                                      torch_state.reshape(-1))


def test_load_state_dict_reports_every_mismatch(numpy_device):
    _, params = _model()
    opt = optim.Adam(params)
    opt.step()
    state = opt.state_dict()
    state["state"][0]["exp_avg"] = np.zeros((2, 2), np.float32)
    state["state"][1]["step"] = np.array(7.0, np.float32)
    state["state"][2]["max_exp_avg_sq"] = np.zeros(params[2].shape, np.float32)
    state["param_groups"][0]["betas"] = (1.5, 0.9)
    before = opt.flat_state["exp_avg"].copy()
    with pytest.raises(ValueError) as info:
        opt.load_state_dict(state)
    message = str(info.value)
    assert message.startswith("Adam.load_state_dict: the state does not match this optimizer")
    for part in ["weight (exp_avg): shape (2, 2) in the state, (5, 7) in the model",
                 "different numbers of steps (1, 7)",
                 "unexpected state max_exp_avg_sq for Adam (amsgrad is not supported)",
                 "invalid beta betas[0]=1.5 in saved group 0"]:
        assert part in message, (part, message)
    np.testing.assert_array_equal(opt.flat_state["exp_avg"], before)   # nothing changed
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)

    two = optim.Adam(_split_groups(params, {}, {})[0])
    with pytest.raises(ValueError, match="the state has 1 parameter groups, this optimizer 2"):
        two.load_state_dict(opt.state_dict())
    torch_style = opt.state_dict()
    torch_style["param_groups"][0]["amsgrad"] = True
    with pytest.raises(ValueError, match="amsgrad=True is not supported"):
        opt.load_state_dict(torch_style)
    with pytest.raises(ValueError, match="decoupled_weight_decay=True does not match Adam"):
        opt.load_state_dict({"state": {}, "param_groups": [
            dict(opt.state_dict()["param_groups"][0], decoupled_weight_decay=True)]})
    short = opt.state_dict()
    short["param_groups"][0]["params"] = [0, 1]
    with pytest.raises(ValueError, match="group 0: 2 parameters in the state, 6 in the "
                                         "optimizer"):
        opt.load_state_dict(short)


def test_sgd_load_checks_momentum_buffers(numpy_device):
    _, params = _model()
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    opt.step()
    state = opt.state_dict()
    del state["state"][4]
    with pytest.raises(ValueError, match="group 0: some parameters have a momentum buffer and "
                                         "some do not"):
        opt.load_state_dict(state)
    fresh = optim.SGD(params, lr=0.1, momentum=0.9)
    fresh.load_state_dict(opt.state_dict())
    np.testing.assert_array_equal(fresh.flat_state["momentum_buffer"],
                                  opt.flat_state["momentum_buffer"])


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD(p, lr=-0.1), r"SGD: invalid learning rate lr=-0.1: must be a finite "
                                      r"number >= 0"),
    (lambda p: optim.SGD(p, momentum=-1), "invalid momentum momentum=-1"),
    (lambda p: optim.SGD(p, nesterov=True), r"Nesterov momentum requires a momentum > 0 and "
                                            r"zero dampening, got momentum=0"),
    (lambda p: optim.SGD(p, momentum=0.9, dampening=0.1, nesterov=True), "zero dampening"),
    (lambda p: optim.SGD(p, weight_decay=-1e-4), "invalid weight decay weight_decay=-0.0001"),
    (lambda p: optim.SGD(p, l1=-1), "invalid L1 coefficient l1=-1"),
    (lambda p: optim.SGD(p, nesterov="yes"), "nesterov must be True or False"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.999)), r"invalid beta betas\[0\]=1.0: must be a "
                                                  r"finite number in \[0, 1\)"),
    (lambda p: optim.Adam(p, betas=(0.9, -0.1)), r"invalid beta betas\[1\]=-0.1"),
    (lambda p: optim.Adam(p, betas=(0.9,)), r"betas must be a pair"),
    (lambda p: optim.AdamW(p, eps=-1e-8), "invalid epsilon eps=-1e-08"),
    (lambda p: optim.Adam(p, lr=float("nan")), "invalid learning rate lr=nan"),
    (lambda p: optim.Adam([{"params": p[:2], "lr": -1.0}, {"params": p[2:]}]),
     "invalid learning rate lr=-1.0 in parameter group 0"),
    (lambda p: optim.SGD([{"params": p[:2]}, {"params": p[1:]}]),
     "SGD: parameter bias appears in groups 0 and 1; a parameter can be in one group only"),
    (lambda p: optim.SGD([p[0], p[0]]), "parameter weight appears in group 0 twice"),
    (lambda p: optim.SGD([]), "SGD: got an empty parameter list"),
    (lambda p: optim.SGD([{"params": p, "weight_decy": 1}]),
     "parameter group 0 has unknown keys weight_decy"),
    (lambda p: optim.SGD([{"lr": 0.1}]), "parameter group 0 has no 'params' key"),
])
def test_bad_hyperparameters_and_groups_are_clear_errors(numpy_device, make, message):
    _, params = _model()
    with pytest.raises(ValueError, match=message):
        make(params)


def test_wrong_types_are_type_errors(numpy_device):
    _, params = _model()
    with pytest.raises(TypeError, match="got a single Parameter"):
        optim.SGD(params[0])
    with pytest.raises(TypeError, match="parameter group 0 holds a ndarray"):
        optim.SGD([params[0].data])


def test_a_hyperparameter_made_invalid_later_fails_at_step(kernel_device):
    _, params = _model()
    opt = optim.SGD(params, lr=0.1)
    opt.param_groups[0]["lr"] = -0.5
    with pytest.raises(ValueError, match="invalid learning rate lr=-0.5 in parameter group 0"):
        opt.step()
    opt.param_groups[0]["lr"] = 0.1
    opt.grad_scale = float("inf")
    with pytest.raises(ValueError, match="grad_scale must be finite"):
        opt.step()


def test_mixed_dtypes_are_rejected(numpy_device):
    layers, params = _model()
    layers[1].to(np.float64)
    with pytest.raises(ValueError, match="SGD: parameter weight is float64 but weight is "
                                         "float32; all must share one dtype"):
        optim.SGD([p for layer in layers for p in layer.parameters()])
