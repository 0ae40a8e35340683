"""Models: torchvision's names, shapes and outputs for the ResNets; the classic CNN; summary."""
import json
from pathlib import Path

import numpy as np
import pytest

import cupycnn
from cupycnn import models

DATA = Path(__file__).parent / "data"
# Recorded from torchvision's own models/resnet.py (built with PyTorch): every state_dict key with
# its shape and dtype, and the logits of two ResNets for seeded weights and inputs.
TORCHVISION_KEYS = json.loads(
    (DATA / "torchvision_resnet_state_dicts.json").read_text(encoding="utf-8"))
TORCHVISION_OUTPUTS = json.loads(
    (DATA / "torchvision_resnet_outputs.json").read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def numpy_device():
    cupycnn.use("numpy")


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_state_dict_is_torchvisions(name):
    state = models.build(name).state_dict()
    ours = [[k, list(v.shape), str(v.dtype)] for k, v in state.items()]
    assert ours == TORCHVISION_KEYS[name]


def test_cifar_stem():
    model = models.resnet18(num_classes=10, stem="cifar")
    state = model.state_dict()
    assert state["conv1.weight"].shape == (64, 3, 3, 3)
    assert state["fc.weight"].shape == (10, 512)
    assert "maxpool" not in dict(model.named_children())
    assert model.num_parameters() == 11_173_962
    assert model.forward(cupycnn.asarray(np.random.default_rng(0).standard_normal(
        (2, 3, 32, 32)).astype(np.float32)), training=False).shape == (2, 10)


def _torchvision_like_weights(name, seed):
    """The weights the recorded outputs were computed with (same generator, same order)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape, _ in TORCHVISION_KEYS[name]:
        if key.endswith("num_batches_tracked"):
            out[key] = np.array(7, np.int64)
            continue
        if key.endswith("running_var"):
            v = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("running_mean") or key.endswith("bias"):
            v = 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:
            v = rng.uniform(0.5, 1.5, shape)
        else:
            v = rng.standard_normal(shape) * np.sqrt(1.0 / int(np.prod(shape[1:])))
        out[key] = v.astype(np.float32)
    return out


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_weights_give_torchvisions_outputs(name):
    record = TORCHVISION_OUTPUTS[name]
    model = models.build(name)
    model.load_state_dict(_torchvision_like_weights(name, record["weight_seed"]))
    assert int(model.state_dict()["bn1.num_batches_tracked"]) == 7
    x = np.random.default_rng(record["input_seed"]).standard_normal(
        record["input_shape"]).astype(np.float32)
    logits = model.forward(x, training=False)
    expected = np.array(record["logits"])
    error = np.linalg.norm(logits - expected) / np.linalg.norm(expected)
    assert error < 1e-5, error


def test_simple_cnn_classic_shape_and_training_step():
    model = models.simple_cnn(num_classes=10)
    assert [n for n, _ in model.named_children()][:6] == [
        "block1_conv1", "block1_bn1", "block1_conv2", "block1_bn2", "block1_pool",
        "block1_dropout"]                                # each ReLU fused into its batchnorm
    assert model.block1_bn1.relu and model.fc1_bn.relu
    unfused = models.simple_cnn(num_classes=10, fused=False)
    assert [n for n, _ in unfused.named_children()][:8] == [
        "block1_conv1", "block1_bn1", "block1_relu1", "block1_conv2", "block1_bn2",
        "block1_relu2", "block1_pool", "block1_dropout"]
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = model.forward(x)
    assert y.shape == (4, 10)
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape
    assert all(np.isfinite(p.grad).all() for p in model.parameters())


def test_simple_cnn_refuses_too_small_inputs():
    with pytest.raises(ValueError, match="too small for 3 pooling blocks"):
        models.simple_cnn(input_size=4)


def test_build_registry():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        models.build("vgg")
    assert set(models.REGISTRY) == {"simple_cnn", "resnet18", "resnet34", "resnet50"}


def test_summary_lists_layers_shapes_and_total(capsys):
    rows = models.simple_cnn(num_classes=10, in_channels=1, input_size=8).summary((1, 8, 8))
    printed = capsys.readouterr().out
    assert "block1_conv1" in printed and "(32, 8, 8)" in printed
    assert "total parameters: 305,386" in printed
    assert rows[1] == ("block1_conv1", "Conv2D", (32, 8, 8), 320)


def test_summary_sees_inside_residual_blocks_through_forward_hooks(capsys):
    """summary() records shapes with the forward hooks every layer offers (no patching), and
    the composites call their children through them, down into a block's residual branches."""
    model = models.resnet18(num_classes=10, stem="cifar")
    rows = {name: shape for name, _, shape, _ in model.summary((3, 16, 16))}
    assert rows["layer2.0.conv1"] == (128, 8, 8) and rows["layer2.0.downsample.0"] == (128, 8, 8)
    assert rows["layer1.1.bn2"] == (64, 16, 16) and rows["fc"] == (10,)
    assert all(not layer._forward_hooks for layer in model.layers())     # all removed


def test_blocks_match_between_sim_and_numpy(rng):
    """BasicBlock and Bottleneck (stride 2, projection shortcut) on the kernels equal the
    reference, forward and backward."""
    x = rng.standard_normal((2, 8, 9, 7)).astype(np.float32)
    results = {}
    for device in ("numpy", "sim"):
        cupycnn.use(device)
        cupycnn.manual_seed(3)
        outs = []
        for block in (models.BasicBlock(8, 12, stride=2), models.Bottleneck(8, 4, stride=2)):
            y = block.forward(cupycnn.asarray(x))
            dy = np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape)
            dx = block.backward(cupycnn.asarray(dy))
            outs.append([cupycnn.asnumpy(a) for a in (y, dx, block.parameters()[0].grad)])
        results[device] = outs
    for ref, got in zip(results["numpy"], results["sim"]):
        for r, g in zip(ref, got):
            assert np.linalg.norm(g - r) / np.linalg.norm(r) < 1e-5
