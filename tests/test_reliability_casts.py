"""Silent casts (issue 12, item 11): what would be truncated, rounded or reinterpreted is
refused, or converted explicitly and exactly, before any state changes."""
import numpy as np
import pytest

import cupycnn
from cupycnn.data import Loader
from cupycnn.layers import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GroupNorm,
                            MaxPool2D, Sequential)
from cupycnn.losses import SoftmaxCrossEntropy
from cupycnn.optim import SGD
from cupycnn.train import Trainer
from helpers import DEVICES


class Items:
    """A custom dataset: len() and [i] -> (image, label), no storage()."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


@pytest.fixture(autouse=True)
def _numpy(numpy_device):
    pass


def _first_batch(dataset):
    return next(iter(Loader(dataset, batch_size=2, shuffle=False, prefetch=False)))


def test_float_images_of_a_custom_dataset_are_refused_not_cast_to_zeros():
    images = np.random.default_rng(0).random((4, 2, 2, 3))          # floats in [0, 1)
    with pytest.raises(ValueError, match=r"dataset\[0\] gave an image of float64 values in "
                                         r"\[0.*\]; images must be uint8 \(0..255\)"):
        _first_batch(Items(images, [0, 1, 0, 1]))


def test_integer_images_in_range_are_converted_exactly_and_others_refused():
    images = np.arange(4 * 2 * 2 * 3).reshape(4, 2, 2, 3).astype(np.int64)
    x, _ = _first_batch(Items(images, [0, 1, 0, 1]))
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(x, images[:2])
    with pytest.raises(ValueError, match=r"dataset\[1\] gave an image of int64 values in \[240, 460\]"):
        _first_batch(Items(images * 20, [0, 1, 0, 1]))


@pytest.mark.parametrize("label", [1.7, "3", True, None, np.float32(2.5)])
def test_labels_that_are_not_integers_are_refused(label):
    images = np.zeros((4, 2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match=r"dataset\[1\] gave the label .*; labels are "
                                         r"integer class indices"):
        _first_batch(Items(images, [0, label, 0, 1]))


def test_integral_float_labels_are_converted_exactly():
    images = np.zeros((4, 2, 2, 3), np.uint8)
    _, y = _first_batch(Items(images, [0.0, np.float64(3.0), 1, 2]))
    np.testing.assert_array_equal(y, [0, 3])


@pytest.mark.parametrize("make, message", [
    (lambda: Conv2D(3.7, 8, 3), "Conv2D: in_channels must be an integer"),
    (lambda: Conv2D(3, 8, 3.5), "kernel_size must be an int or a pair of ints"),
    (lambda: Conv2D(3, 8, True), "kernel_size must be an int or a pair of ints"),
    (lambda: Dense(2.5, 3), "Dense: in_features must be an integer"),
    (lambda: Dense(2, "3"), "Dense: out_features must be an integer"),
    (lambda: BatchNorm2D(4.2), "BatchNorm2D: num_features must be an integer"),
    (lambda: BatchNorm1D(4, eps="small"), "BatchNorm1D: eps must be a positive number"),
    (lambda: BatchNorm1D(4, momentum=2.0), "BatchNorm1D: momentum must be None or a number in"),
    (lambda: GroupNorm(2.0, 4), "GroupNorm: num_groups must be an integer"),
    (lambda: Flatten(1.5), "Flatten: start_dim must be an integer"),
    (lambda: MaxPool2D(2.5), "kernel_size"),
    (lambda: Dropout("0.5"), "dropout probability has to be between 0 and 1"),
])
def test_layer_arguments_are_refused_not_truncated(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=True), "batch_size must be an integer"),
    (dict(batch_size=2.0), "batch_size must be an integer"),
    (dict(batch_size=2, shuffle="no"), "shuffle must be True or False"),
    (dict(batch_size=2, drop_last=1), "drop_last must be True or False"),
    (dict(batch_size=2, seed=1.5), "seed must be an integer"),
])
def test_loader_arguments_are_refused_not_cast(kwargs, message):
    from cupycnn.data import Synthetic
    with pytest.raises(ValueError, match=f"Loader: {message}"):
        Loader(Synthetic(4, shape=(2, 2, 3), num_classes=2), **kwargs)


def _trainer(device):
    cupycnn.use(device)
    cupycnn.manual_seed(0)
    model = Sequential(Flatten(), Dense(12, 8), BatchNorm1D(8), Dense(8, 3))
    return Trainer(model, SGD(model.parameters(), lr=0.1), SoftmaxCrossEntropy(), progress=False)


@pytest.mark.parametrize("device", DEVICES)
def test_int64_labels_train_as_int32_labels_do(device):
    """On sim the step used to apply the optimizer and then raise on the metrics' dtype."""
    cupycnn.use(device)
    x = cupycnn.asarray(np.random.default_rng(1).standard_normal((4, 3, 2, 2)).astype(np.float32))
    results = []
    for dtype in (np.int32, np.int64, np.uint8):
        trainer = _trainer(device)
        from cupycnn.ops import metrics
        sums = metrics.new_sums()
        trainer.train_step(x, cupycnn.asarray(np.array([0, 2, 1, 2], dtype)), sums)
        results.append((trainer.model.state_dict(), cupycnn.asnumpy(sums)))
    for state, sums in results[1:]:
        for name, value in results[0][0].items():
            np.testing.assert_array_equal(state[name], value, err_msg=name)
        np.testing.assert_array_equal(sums, results[0][1])


@pytest.mark.parametrize("device", ["numpy", "sim"])      # cuda checks no labels (no host read)
@pytest.mark.parametrize("labels, message", [
    (np.array([0, 2, 1, 7], np.int64), r"labels\[3\] = 7 is not a class index for 3 classes"),
    (np.array([0, 2, 1, -1], np.int64), r"labels\[3\] = -1 is not a class index"),
    (np.array([0.0, 2.0, 1.0, 1.0]), "the labels y must be an integer array"),
    (np.array([0, 1, 2], np.int32), "3 labels for inputs of shape"),
])
def test_a_bad_batch_changes_nothing(device, labels, message):
    trainer = _trainer(device)
    from cupycnn.ops import metrics
    x = cupycnn.asarray(np.random.default_rng(1).standard_normal((4, 3, 2, 2)).astype(np.float32))
    trainer.train_step(x, cupycnn.asarray(np.array([0, 1, 2, 0], np.int32)), metrics.new_sums())
    before = trainer.model.state_dict()
    momentum = trainer.optimizer.state_dict()
    with pytest.raises(ValueError, match=message):
        trainer.train_step(x, cupycnn.asarray(labels), metrics.new_sums())
    assert trainer.step == 1
    for name, value in before.items():
        np.testing.assert_array_equal(trainer.model.state_dict()[name], value, err_msg=name)
    assert str(trainer.optimizer.state_dict()) == str(momentum)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 2.5}, r"fit: epochs must be an integer of at least 0, got 2\.5"),
    ({"epochs": True}, r"fit: epochs must be an integer of at least 0, got True"),
    ({"epochs": "3"}, r"fit: epochs must be an integer of at least 0, got '3'"),
    ({"epochs": 3, "stop_at": 1.5}, r"fit: stop_at must be an integer of at least 0, got 1\.5"),
    ({"epochs": 1, "batch_size": True}, r"fit: batch_size must be a positive integer, got True"),
])
def test_fit_arguments_are_refused_not_cast(numpy_device, kwargs, message):
    from cupycnn.layers import Dense
    from cupycnn.optim import SGD
    from cupycnn.train import Trainer
    model = Dense(4, 2)
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1), progress=False)
    x = np.random.default_rng(0).random((8, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=message):
        trainer.fit(x, np.arange(8) % 2, **({"batch_size": 4} | kwargs))
    assert trainer.epoch == 0 and trainer.step == 0
