"""Keras-style data: Trainer.fit(x, y, ...), evaluate(x, y) and predict(x) on NumPy arrays of
uint8 or float images, or of network input; ArrayDataset on float images."""
import warnings

import numpy as np
import pytest

import cupycnn
from cupycnn.data import (ArrayDataset, Loader, Normalize, Synthetic, TensorDataset,
                          channel_stats)
from cupycnn.layers import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential
from cupycnn.optim import Adam
from cupycnn.train import Trainer


def cnn(seed=0, channels=3):
    cupycnn.manual_seed(seed)
    return Sequential(Conv2D(channels, 6, 3, padding=1), BatchNorm2D(6), ReLU(), MaxPool2D(2),
                      Flatten(), Dense(6 * 4 * 4, 4))


def trainer_for(model, **kwargs):
    return Trainer(model, Adam(model.parameters(), lr=1e-2), progress=False, **kwargs)


@pytest.fixture(scope="module")
def arrays():
    train = Synthetic(96, shape=(8, 8, 3), num_classes=4, seed=1)
    test = Synthetic(40, shape=(8, 8, 3), num_classes=4, seed=2)
    return train.images, train.labels, test.images, test.labels


def test_fit_evaluate_predict_on_uint8_arrays(arrays):
    cupycnn.use("numpy")
    x, y, xt, yt = arrays
    trainer = trainer_for(cnn())
    history = trainer.fit(x, y, epochs=4, batch_size=16, validation_data=(xt, yt))
    assert history["epoch"] == [1, 2, 3, 4] and "val_accuracy" in history
    assert history["val_accuracy"][-1] >= 0.9
    mean, std = channel_stats(x)                        # fit computed the normalisation
    assert trainer.normalization == {"mean": list(mean), "std": list(std)}
    result = trainer.evaluate(xt, yt)
    assert result["count"] == 40 and result["accuracy"] == history["val_accuracy"][-1]
    loader = Loader(ArrayDataset(xt, yt), 7, shuffle=True, transform=Normalize(mean, std))
    from_loader = trainer.evaluate(loader)               # arrays and loaders agree
    assert (from_loader["count"], from_loader["accuracy"]) == (40, result["accuracy"])
    assert from_loader["loss"] == pytest.approx(result["loss"], rel=1e-6)   # other batches
    probs = trainer.predict(xt)
    assert probs.shape == (40, 4)
    assert np.mean(np.argmax(probs, 1) == yt) == result["accuracy"]     # rows in x's order
    np.testing.assert_array_equal(probs, trainer.predict(loader))


def test_float_images_and_network_input_train_as_the_uint8_images_do(arrays):
    """x / 255 (Keras' habit) gives exactly the run uint8 images give; the same images
    normalised by hand into [N, C, H, W] (PyTorch's habit) give it to float32 rounding."""
    cupycnn.use("numpy")
    x, y, _, _ = arrays
    runs = {}
    mean, std = channel_stats(x)
    by_hand = ((x / np.float32(255) - np.float32(mean)) / np.float32(std)).astype(np.float32)
    for name, data in (("uint8", x), ("float", x.astype(np.float32) / 255),
                       ("input", np.ascontiguousarray(by_hand.transpose(0, 3, 1, 2)))):
        trainer = trainer_for(cnn(), normalization=None)
        trainer.fit(data, y, epochs=2, batch_size=16)
        runs[name] = (trainer.history["loss"], trainer.model.state_dict())
    assert runs["float"][0] == runs["uint8"][0]
    for k, v in runs["uint8"][1].items():
        np.testing.assert_array_equal(runs["float"][1][k], v, err_msg=k)
        np.testing.assert_allclose(runs["input"][1][k], v, rtol=1e-3, atol=1e-4, err_msg=k)


def test_features_for_a_dense_model():
    cupycnn.use("numpy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    cupycnn.manual_seed(0)
    trainer = trainer_for(Sequential(Dense(5, 16), ReLU(), Dense(16, 2)))
    trainer.fit(x, y, epochs=20, batch_size=16)
    assert trainer.evaluate(x, y)["accuracy"] >= 0.9
    assert trainer.normalization is None                 # not images: nothing to normalise
    assert trainer.predict(x[:3]).shape == (3, 2)


def test_resume_with_arrays_is_exact(arrays, tmp_path):
    cupycnn.use("numpy")
    x, y, _, _ = arrays
    straight = trainer_for(cnn())
    straight.fit(x, y, epochs=4, batch_size=32)
    first = trainer_for(cnn())
    first.fit(x, y, epochs=2, batch_size=32)
    first.save_checkpoint(tmp_path / "mid.h5")
    cupycnn.manual_seed(123)
    second = trainer_for(cnn(seed=5))
    second.resume(tmp_path / "mid.h5")
    second.fit(x, y, epochs=4, batch_size=32)
    assert second.history["loss"] == straight.history["loss"]
    for k, v in straight.model.state_dict().items():
        np.testing.assert_array_equal(second.model.state_dict()[k], v, err_msg=k)


def test_loaders_still_fit_as_before(arrays):
    cupycnn.use("numpy")
    x, y, _, _ = arrays
    data = ArrayDataset(x, y)
    trainer = trainer_for(cnn(), normalization=None)
    loader = Loader(data, 32, shuffle=True, transform=Normalize(*channel_stats(x)))
    assert trainer.fit(loader, 2)["epoch"] == [1, 2]                # fit(loader, epochs)
    assert trainer.fit(loader, epochs=3, val_loader=loader)["epoch"] == [1, 2, 3]


def test_array_problems_are_one_clear_sentence(arrays):
    cupycnn.use("numpy")
    x, y, _, _ = arrays
    trainer = trainer_for(cnn())
    with pytest.raises(ValueError, match=r"y has shape \(96, 4\): labels are class indices"):
        trainer.fit(x, np.eye(4)[y], epochs=1)
    with pytest.raises(ValueError, match="arrays need their labels"):
        trainer.fit(x, epochs=1)
    with pytest.raises(ValueError, match="no input normalisation to feed them with"):
        trainer.predict(x)
    with pytest.raises(ValueError, match=r"x has shape \(96, 8, 8, 5\), but the model's first "
                                         r"layer takes 3 channels"):
        trainer.fit(np.zeros((96, 8, 8, 5), np.float32), y)
    with pytest.raises(ValueError, match="a loader brings its own labels and batch size"):
        trainer.fit(Loader(ArrayDataset(x, y), 8), batch_size=8)
    with pytest.raises(ValueError, match=r"float images must hold pixel values in \[0, 1\]"):
        trainer.fit(x.astype(np.float32), y)             # 0..255 as floats: the fix is named


def test_array_dataset_takes_float_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    exact = ArrayDataset(images.astype(np.float32) / 255, np.arange(5) % 2)
    np.testing.assert_array_equal(exact.images, images)          # exact for 8-bit images
    with pytest.warns(UserWarning, match=r"float images rounded to 8 bits.*up to 0\.[0-9]+/255"):
        ArrayDataset(rng.uniform(0, 1, (5, 4, 4)).astype(np.float64), np.zeros(5, int))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ArrayDataset(images / 255.0, np.zeros(5, int))            # float64 x / 255: no warning
    with pytest.raises(ValueError, match=r"range over \[-1\.5, 2\].*TensorDataset"):
        ArrayDataset(np.array([-1.5, 2.0] * 40, np.float32).reshape(5, 4, 4), np.zeros(5, int))
    with pytest.raises(ValueError, match="images must be uint8 .* or float .*, got int32"):
        ArrayDataset(images.astype(np.int32), np.zeros(5, int))
    inputs = TensorDataset(rng.standard_normal((5, 3, 4, 4)), np.arange(5) % 2)
    x, labels = next(iter(Loader(inputs, 5)))
    assert x.dtype == np.float32 and x.shape == (5, 3, 4, 4) and labels.tolist() == [0, 1, 0, 1, 0]


def test_keras_habits_validation_split_history_and_a_second_fit(arrays):
    """fit(x, y, validation_split=0.25) holds out the last quarter before shuffling (Keras);
    history.history reads as Keras's; a second fit with the same epochs says it trains none."""
    cupycnn.use("numpy")
    x, y, _, _ = arrays
    split = trainer_for(cnn())
    history = split.fit(x, y, epochs=2, batch_size=16, validation_split=0.25)
    assert history.history is history and len(history.history["val_accuracy"]) == 2
    mean, std = channel_stats(x[:72])          # the normalisation of the training rows alone
    assert split.normalization == {"mean": list(mean), "std": list(std)}
    given = trainer_for(cnn())                 # the same as giving the last 24 rows by hand
    expected = given.fit(x[:72], y[:72], epochs=2, batch_size=16,
                         validation_data=(x[72:], y[72:]))
    assert history["val_loss"] == expected["val_loss"] and history["loss"] == expected["loss"]
    assert split.evaluate(x[72:], y[72:])["accuracy"] == history["val_accuracy"][-1]

    with pytest.warns(UserWarning, match=r"nothing to train: 2 epoch\(s\) are already done "
                                         r"and epochs=2 counts them .* epochs=2 \+ n"):
        again = split.fit(x, y, epochs=2, batch_size=16)
    assert again["epoch"] == [1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert split.fit(x, y, epochs=3, batch_size=16)["epoch"] == [1, 2, 3]


@pytest.mark.parametrize("kwargs, message", [
    ({"validation_split": 1.0}, r"validation_split must be a fraction between 0 and 1, got 1\.0"),
    ({"validation_split": 0.999}, r"validation_split=0\.999 of 96 rows leaves 0 for training "
                                  r"and 96 for validation; both need at least one"),
    ({"validation_split": 0.2, "validation_data": "x"}, "validation_split or validation_data"),
])
def test_validation_split_problems_are_one_sentence(arrays, kwargs, message):
    cupycnn.use("numpy")
    x, y, _, _ = arrays
    with pytest.raises(ValueError, match=message):
        trainer_for(cnn()).fit(x, y, epochs=1, **kwargs)
    loader = Loader(ArrayDataset(x, y), 8)
    with pytest.raises(ValueError, match="validation_split splits arrays"):
        trainer_for(cnn()).fit(loader, epochs=1, validation_split=0.2)


def test_a_list_of_images_is_told_to_become_one_array(arrays):
    cupycnn.use("numpy")
    x, y, xt, yt = arrays
    trainer = trainer_for(cnn())
    trainer.fit(x, y, epochs=1, batch_size=32)
    for call in (lambda: trainer.predict(list(xt)), lambda: trainer.evaluate(list(xt), yt),
                 lambda: trainer.fit(list(x), y, epochs=2)):
        with pytest.raises(ValueError, match=r"got a list of \d+ arrays; give one array "
                                             r"\[N, \.\.\.\] \(np\.stack of the images\)"):
            call()
    np.testing.assert_array_equal(trainer.predict(np.stack(list(xt))), trainer.predict(xt))


def test_fit_gives_the_modes_back_when_training_stops_on_an_error(arrays):
    from cupycnn.train import Callback

    class Boom(Callback):
        def on_epoch_end(self, epoch, logs):
            raise RuntimeError("boom")

    cupycnn.use("numpy")
    x, y, _, _ = arrays
    model = cnn()
    model.eval()
    trainer = Trainer(model, Adam(model.parameters()), progress=False, callbacks=[Boom()])
    with pytest.raises(RuntimeError, match="boom") as error:
        trainer.fit(x, y, epochs=1, batch_size=32)
    # While the traceback lives (as in an interactive session after Ctrl-C), not only once the
    # garbage collector closes the context manager.
    assert error.traceback and not any(layer.training for layer in model.layers())
