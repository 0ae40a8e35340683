"""PyTorch's habits on every layer: persistent train()/eval() modes that forward follows, and
sub-layers that register themselves when assigned as attributes (nn.Module.__setattr__)."""
import collections

import numpy as np
import pytest

import cupycnn
from cupycnn import models
from cupycnn.layers import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, Layer,
                            MaxPool2D, ReLU, Residual, Sequential)
from cupycnn.layers.base import training_mode
from cupycnn.optim import SGD


def bn_net():
    return Sequential(Conv2D(3, 4, 3, padding=1), BatchNorm2D(4), ReLU(), MaxPool2D(2),
                      Flatten(), Dropout(0.5), Dense(4 * 3 * 3, 5), BatchNorm1D(5))


def batch(rng, n=4):
    return cupycnn.asarray(rng.standard_normal((n, 3, 6, 6)).astype(np.float32))


def running_stats(model):
    return {k: v.copy() for k, v in model.state_dict().items() if "running" in k}


def test_model_call_follows_the_persistent_mode(rng):
    cupycnn.use("numpy")
    model, x = bn_net(), batch(rng)
    assert all(layer.training for layer in model.layers())          # built in training mode
    before = running_stats(model)
    model(x)                                                         # training: stats move
    moved = running_stats(model)
    assert all(not np.array_equal(before[k], moved[k]) for k in before if "var" in k)

    assert model.eval() is model and not any(layer.training for layer in model.layers())
    first, second = model(x), model.forward(x)                       # both follow the mode
    for k, v in running_stats(model).items():
        np.testing.assert_array_equal(v, moved[k], err_msg=k)        # untouched in eval mode
    np.testing.assert_array_equal(first, second)                     # no dropout, no batch stats
    np.testing.assert_array_equal(first, model.forward(x, training=False))
    assert model.train() is model and all(layer.training for layer in model.layers())
    assert not np.array_equal(model(x), first)                       # dropout is back on


def test_an_explicit_flag_overrides_the_modes_and_none_follows_each_layer(rng):
    cupycnn.use("numpy")
    model, x = bn_net(), batch(rng)
    model.eval()
    before = running_stats(model)
    model.forward(x, training=True)                                  # explicit: the whole call
    assert not np.array_equal(running_stats(model)["1.running_mean"], before["1.running_mean"])
    model.eval()
    model[1].train()                                                 # one layer back in training
    before = running_stats(model)
    model(x)
    after = running_stats(model)
    assert not np.array_equal(after["1.running_mean"], before["1.running_mean"])
    np.testing.assert_array_equal(after["7.running_mean"], before["7.running_mean"])


@pytest.mark.parametrize("fused", [True, False])
def test_modes_reach_every_layer_of_a_resnet_block(fused):
    """The ResNet blocks expose torchvision's names but run other objects (a body and the last
    batchnorm's fused epilogue, or a Residual of a Sequential): eval() reaches those too."""
    cupycnn.use("numpy")
    model = models.resnet18(num_classes=3, stem="cifar", fused=fused)
    model.eval()
    block = model.layer1[0]
    runs = [block.body, block.last_bn] if fused else [block.residual, block.residual.main]
    assert not any(layer.training for layer in runs)
    assert not any(layer.training for layer in block._every_layer())
    with training_mode(model, True):
        assert all(layer.training for layer in block._every_layer())
    assert not any(layer.training for layer in block._every_layer())        # restored


def test_training_mode_restores_each_layers_own_mode_even_after_an_error():
    model = bn_net()
    model[1].eval()
    with pytest.raises(RuntimeError):
        with training_mode(model, False):
            assert not any(layer.training for layer in model.layers())
            raise RuntimeError("boom")
    assert [layer.training for layer in model] == [True, False] + [True] * 6


# ------------------------------------------------------------------- PyTorch-style subclasses

class Net(Layer):
    """Written as a PyTorch user writes an nn.Module: sub-layers as attributes, no
    named_children()."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv = Conv2D(3, 4, 3, padding=1)
        self.bn = BatchNorm2D(4)
        self.relu = ReLU()
        self.pool = MaxPool2D(2)
        self.flatten = Flatten()
        self.fc = Dense(4 * 3 * 3, classes)
        self.unused = None                       # PyTorch's optional sub-module

    def forward(self, x, training=None):
        for layer in (self.conv, self.bn, self.relu, self.pool, self.flatten, self.fc):
            x = layer(x, training)
        return x

    def backward(self, dy):
        for layer in (self.fc, self.flatten, self.pool, self.relu, self.bn, self.conv):
            dy = layer.backward(dy)
        return dy


def test_attribute_sub_layers_register_as_in_pytorch(rng):
    cupycnn.use("numpy")
    net = Net()
    assert [n for n, _ in net.named_children()] == ["conv", "bn", "relu", "pool", "flatten", "fc"]
    assert [n for n, _ in net.named_parameters()] == [
        "conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight", "fc.bias"]
    assert list(net.state_dict()) == [
        "conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
        "bn.num_batches_tracked", "fc.weight", "fc.bias"]
    assert net.num_parameters() == 4 * 3 * 9 + 4 + 4 + 4 + 36 * 3 + 3
    text = repr(net)
    assert text.startswith("Net(\n  (conv): Conv2D(3, 4, kernel_size=(3, 3)")
    assert "\n  (fc): Dense(in_features=36, out_features=3, bias=True)\n)" in text
    net.eval()
    assert not net.bn.training and not net.training

    # It trains: one SGD step through the registered parameters changes all of them.
    net.train()
    optimizer = SGD(net.parameters(), lr=0.1)
    before = net.state_dict()
    x = batch(rng)
    net(x)
    net.backward(cupycnn.asarray(rng.standard_normal((4, 3)).astype(np.float32)))
    optimizer.step()
    after = net.state_dict()
    assert all(not np.array_equal(before[k], after[k]) for k, _ in net.named_parameters())

    # state_dict round trip into a fresh copy, and the copy's outputs agree.
    twin = Net()
    twin.load_state_dict(after)
    np.testing.assert_array_equal(twin.forward(x, training=False), net.forward(x, training=False))


def test_reassigning_and_removing_sub_layers():
    net = Net()
    head = Dense(36, 7)
    net.fc = head                                 # replaced in place: same position
    assert net.fc is head and [n for n, _ in net.named_children()][-1] == "fc"
    assert "fc.weight" in net.state_dict() and net.state_dict()["fc.weight"].shape == (7, 36)
    net.fc = None                                 # PyTorch: an empty slot
    assert "fc" not in dict(net.named_children()) and net.fc is None
    net.extra = ReLU()
    del net.extra
    assert "extra" not in dict(net.named_children())
    with pytest.raises(AttributeError, match="'Net' object has no attribute 'extra'"):
        net.extra
    with pytest.raises(TypeError, match="cannot assign a int to 'bn', a sub-layer"):
        net.bn = 3
    with pytest.raises(ValueError, match="a sub-layer cannot be named 'layers'"):
        net.layers = Sequential(ReLU())


def test_sub_layers_assigned_before_init_and_in_containers():
    class Early(Layer):
        def __init__(self):
            self.fc = Dense(2, 2)                 # before super().__init__(): kept
            super().__init__()

    assert [n for n, _ in Early().named_children()] == ["fc"]
    seq = Sequential(collections.OrderedDict(a=Dense(2, 3)))
    seq.b = Dense(3, 1)                           # PyTorch's Sequential: appended, named "b"
    assert [n for n, _ in seq.named_children()] == ["a", "b"] and seq.b is seq[1]
    res = Residual(Dense(3, 3))
    assert [n for n, _ in res.named_children()] == ["main"] and res.shortcut is None
    res.shortcut = Dense(3, 3)
    assert [n for n, _ in res.named_children()] == ["main", "shortcut"]


def test_a_uint8_batch_is_told_to_add_normalize():
    cupycnn.use("numpy")
    images = np.zeros((2, 6, 6, 3), np.uint8)
    for model in (bn_net(), Net(), Dense(3, 2)):
        with pytest.raises(ValueError, match=r"got a uint8 batch \(2, 6, 6, 3\).*Normalize"):
            model(images)


def test_layers_in_a_plain_list_are_refused_with_the_fix(rng):
    """PyTorch's silent trap (a list of modules instead of nn.ModuleList trains nothing of
    them): refused at the assignment, or by the Trainer when the list was filled later; a
    Sequential is the ModuleList, and a list of layers that are sub-layers already is fine."""
    from cupycnn.train import Trainer

    class Listed(Layer):
        def __init__(self):
            super().__init__()
            self.blocks = [Conv2D(3, 4, 3, padding=1), ReLU()]

    with pytest.raises(ValueError, match=r"Listed\.blocks\[0\] \(Conv2D\), Listed\.blocks\[1\] "
                                         r"\(ReLU\): a layer in a plain list.*neither trained "
                                         r"nor saved.*self\.blocks = Sequential\(\.\.\.\)"):
        Listed()

    class FilledLater(Layer):
        def __init__(self):
            super().__init__()
            self.fc = Dense(3, 2)
            self.extra = {}
            self.extra["head"] = Dense(2, 2)          # after the assignment: unseen there

    model = Sequential(FilledLater())
    with pytest.raises(ValueError, match=r"Trainer: FilledLater\.extra\['head'\] \(Dense\): a "
                                         r"layer in a plain list"):
        Trainer(model, SGD(model.parameters(), lr=0.1), progress=False)

    class AsModuleList(Layer):
        def __init__(self):
            super().__init__()
            self.blocks = Sequential(Conv2D(3, 4, 3, padding=1), ReLU())
            self.blocks.append(Conv2D(4, 2, 1))
            self.order = [self.blocks[0], self.blocks[2]]     # already sub-layers: fine

        def forward(self, x, training=None):
            for block in self.blocks:
                x = block(x, training)
            return x

    cupycnn.use("numpy")
    net = AsModuleList()
    assert list(net.state_dict()) == ["blocks.0.weight", "blocks.0.bias", "blocks.2.weight",
                                      "blocks.2.bias"]
    assert net(batch(rng)).shape == (4, 2, 6, 6)
    net.eval()
    assert not any(layer.training for layer in net.blocks)
    for model in (bn_net(), Net(), models.resnet18(num_classes=3, stem="cifar"),
                  models.resnet18(num_classes=3, stem="cifar", fused=False),
                  models.resnet50(num_classes=3), models.simple_cnn(),
                  models.fold_batchnorm(models.resnet18(num_classes=3, stem="cifar").eval())):
        Trainer(model, SGD(model.parameters(), lr=0.1), progress=False)   # the library's own


def test_a_forward_written_as_in_pytorch_takes_the_mode(rng):
    """forward(self, x), without `training`, as PyTorch users write it: model(x) follows the
    modes; an explicit flag (the Trainer's) puts the layer's tree in that mode for the call and
    gives each layer its own back; fit, evaluate and predict run it. Without a backward, the
    error says why one is needed."""
    from cupycnn.train import Trainer

    class TorchStyle(Layer):
        def __init__(self):
            super().__init__()
            self.conv = Conv2D(3, 4, 3, padding=1)
            self.bn = BatchNorm2D(4)
            self.flatten = Flatten()
            self.fc = Dense(4 * 6 * 6, 3)

        def forward(self, x):
            return self.fc(self.flatten(self.bn(self.conv(x))))

        def backward(self, dy):
            return self.conv.backward(self.bn.backward(self.flatten.backward(
                self.fc.backward(dy))))

    cupycnn.use("numpy")
    net, x = TorchStyle(), batch(rng)
    before = running_stats(net)
    net.eval()
    first = net(x)
    np.testing.assert_array_equal(running_stats(net)["bn.running_mean"], before["bn.running_mean"])
    net.forward(x, training=True)                       # explicit: batch statistics, moved
    assert not np.array_equal(running_stats(net)["bn.running_mean"], before["bn.running_mean"])
    assert not any(layer.training for layer in net.layers())        # eval, as it was
    np.testing.assert_array_equal(net.forward(x, training=False), net(x))
    assert not np.array_equal(net(x), first)            # the statistics it moved are used
    trainer = Trainer(net, SGD(net.parameters(), lr=0.1), progress=False)
    labels = np.arange(4) % 3
    trainer.fit(cupycnn.asnumpy(x), labels, epochs=2, batch_size=2)
    assert trainer.predict(cupycnn.asnumpy(x)).shape == (4, 3)
    assert trainer.evaluate(cupycnn.asnumpy(x), labels)["count"] == 4

    class NoBackward(Layer):
        def __init__(self):
            super().__init__()
            self.fc = Dense(3, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(NotImplementedError, match="NoBackward.backward is not written: cupycnn "
                                                  "has no autograd"):
        model = NoBackward()
        Trainer(model, SGD(model.parameters(), lr=0.1), progress=False).fit(
            np.ones((2, 3), np.float32), np.zeros(2, int), batch_size=2)
    with pytest.raises(ValueError, match=r"fit: the trainer has no optimizer"):
        Trainer(model, None, progress=False).fit(np.ones((2, 3), np.float32), np.zeros(2, int))
