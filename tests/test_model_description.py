"""Models of your own saved and predicted: checkpoints describe any model built from the
library's layers (the Sequential / Residual tree with each layer's arguments, as data), and
load_model and examples/predict.py rebuild it."""
import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cupycnn
from cupycnn import models
from cupycnn.checkpoint import CheckpointError, load_checkpoint
from cupycnn.data import Digits, Loader, Normalize, channel_stats
from cupycnn.layers import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout,
                            Flatten, GlobalAvgPool2D, GroupNorm, Layer, MaxPool2D, ReLU,
                            Residual, Sequential)
from cupycnn.models.description import (NotDescribable, build_from_description, describe)
from cupycnn.optim import Adam
from cupycnn.predict import load_model, predict, prepare_images
from cupycnn.train import Trainer

ROOT = Path(__file__).resolve().parent.parent


def my_net(classes=10):
    """A model of one's own: no registry name, a residual block, every kind of layer."""
    block = Residual(Sequential(Conv2D(8, 8, 3, padding=1, bias=False), GroupNorm(2, 8),
                                ReLU(), Conv2D(8, 8, 3, padding=1)),
                     Sequential(Conv2D(8, 8, 1, bias=False), BatchNorm2D(8, momentum=None)))
    return Sequential(collections.OrderedDict(
        stem=Conv2D(1, 8, 3, padding=1), bn=BatchNorm2D(8, eps=1e-3), relu=ReLU(), block=block,
        pool=AvgPool2D(2, stride=2), drop=Dropout(0.1), flat=Flatten(),
        fc=Dense(8 * 4 * 4, 16, bias=False), fc_bn=BatchNorm1D(16), fc_relu=ReLU(),
        head=Dense(16, classes)))


@pytest.mark.parametrize("build, shape", [
    (my_net, (2, 1, 8, 8)),
    (lambda: models.simple_cnn(num_classes=3, widths=(4, 8), block_dropout=(0.1, 0.2)),
     (2, 3, 32, 32)),
    (lambda: models.resnet18(num_classes=5, stem="cifar"), (2, 3, 16, 16)),
    (lambda: models.resnet50(num_classes=4, stem="imagenet"), (1, 3, 32, 32)),
    (lambda: Sequential(MaxPool2D(2, stride=1, padding=1), GlobalAvgPool2D()), (2, 3, 5, 5)),
])
def test_describe_and_rebuild_give_the_same_model(rng, build, shape):
    cupycnn.use("numpy")
    model = build()
    description = json.loads(json.dumps(describe(model)))      # what a file holds
    twin = build_from_description(description)
    assert list(twin.state_dict()) == list(model.state_dict())
    twin.load_state_dict(model.state_dict())
    x = cupycnn.asarray(rng.standard_normal(shape).astype(np.float32))
    np.testing.assert_array_equal(twin.forward(x, training=False),
                                  model.forward(x, training=False))


class MyLayer(Layer):
    def __init__(self):
        super().__init__()
        self.fc = Dense(64, 10)

    def forward(self, x, training=None):
        return self.fc(x.reshape(len(x), -1), training)

    def backward(self, dy):
        return self.fc.backward(dy)


def test_own_code_is_named_not_described():
    with pytest.raises(NotDescribable, match=r"model\.1 is a MyLayer, not one of the library's "
                                             r"layers.*load_state_dict"):
        describe(Sequential(ReLU(), MyLayer()))


@pytest.mark.parametrize("description, message", [
    ({"type": "os.system", "args": {}}, "the type 'os.system', which is not one of the library's"),
    ({"type": "Dense", "args": {"in_features": "rm -rf /", "out_features": 2}},
     "its arguments must be a dict of numbers"),
    ({"type": "Dense", "args": {"in_features": 2}}, "cannot build Dense"),
    ({"type": "Sequential", "children": {"a": 1}}, "a list of [name, layer] pairs"),
    ({"type": "Sequential", "children": [["a", {"type": "Dense", "args": {
        "in_features": 2, "out_features": 2, "bias": [1] * 100}}]]}, "numbers, booleans"),
    ("Dense", "is not a layer node"),
])
def test_hostile_or_broken_descriptions_are_refused(description, message):
    with pytest.raises(ValueError, match="the description: ") as error:
        build_from_description(description)
    assert message in str(error.value)


def test_deep_or_huge_descriptions_are_refused():
    deep = {"type": "ReLU"}
    for _ in range(100):
        deep = {"type": "Sequential", "children": [["0", deep]]}
    with pytest.raises(ValueError, match="levels of nesting"):
        build_from_description(deep)
    wide = {"type": "Sequential", "children": [[str(i), {"type": "ReLU"}] for i in range(20000)]}
    with pytest.raises(ValueError, match="more than 10000 layers"):
        build_from_description(wide)


@pytest.fixture(scope="module")
def trained_own_model(tmp_path_factory):
    """my_net trained 2 epochs on digits with a Loader and no config: what a user writes."""
    cupycnn.use("numpy")
    cupycnn.manual_seed(0)
    folder = tmp_path_factory.mktemp("own")
    train, test = Digits(train=True), Digits(train=False)
    model = my_net()
    trainer = Trainer(model, Adam(model.parameters(), lr=3e-3), progress=False,
                      classes=train.classes)
    trainer.fit(Loader(train, 32, shuffle=True, transform=Normalize(*channel_stats(train))),
                epochs=2)
    trainer.save_checkpoint(folder / "own.h5")
    files = []
    for i in range(4):
        files.append(folder / f"digit{i}.png")
        Image.fromarray(test.images[i, :, :, 0], mode="L").save(files[-1])
    return trainer, folder / "own.h5", files, test


def test_a_model_of_ones_own_is_rebuilt_from_its_checkpoint(trained_own_model):
    trainer, path, files, test = trained_own_model
    cupycnn.use("numpy")
    model, checkpoint = load_model(path)
    assert checkpoint.config["input_shape"] == [1, 8, 8]               # from the batches
    assert checkpoint.normalization == trainer.normalization            # from the Normalize
    x = prepare_images(files, checkpoint.config, checkpoint.normalization)
    np.testing.assert_allclose(predict(model, x, checkpoint.classes, top_k=10)[0][0][1],
                               trainer.predict(test.images[:4]).max(axis=1)[0], rtol=1e-6)
    np.testing.assert_array_equal(
        [int(top[0][0]) for top in predict(model, x, checkpoint.classes)],
        np.argmax(trainer.predict(test.images[:4]), axis=1))


def test_the_prediction_command_predicts_a_model_of_ones_own(trained_own_model):
    trainer, path, files, test = trained_own_model
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "predict.py"), *map(str, files),
                          "--checkpoint", str(path), "--top-k", "1", "--device", "numpy"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    predicted = [int(lines[2 * i + 1].split()[-1]) for i in range(len(files))]
    assert predicted == np.argmax(trainer.predict(test.images[:4]), axis=1).tolist()


def test_a_checkpoint_of_own_code_says_why_it_cannot_be_rebuilt(tmp_path):
    cupycnn.use("numpy")
    model = Sequential(Flatten(), MyLayer())
    trainer = Trainer(model, Adam(model.parameters()), progress=False)
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    trainer.fit(x, np.arange(4), epochs=1, batch_size=4)
    trainer.save_checkpoint(tmp_path / "code.h5")
    assert "MyLayer" in load_checkpoint(tmp_path / "code.h5").config["architecture_missing"]
    with pytest.raises(CheckpointError, match=r"lacks model, model_kwargs.*No architecture was "
                                              r"saved: model\.1 is a MyLayer"):
        load_model(tmp_path / "code.h5")
