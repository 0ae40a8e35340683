"""Evaluation and prediction in dataset order whatever the loader does, and loaders in dataset
order unless shuffling is asked (PyTorch's DataLoader default)."""
import numpy as np

import cupycnn
from cupycnn.data import Loader, Normalize, Synthetic
from cupycnn.layers import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential
from cupycnn.optim import Adam
from cupycnn.train import Trainer

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def trained(seed=0):
    cupycnn.use("numpy")
    cupycnn.manual_seed(seed)
    model = Sequential(Conv2D(3, 6, 3, padding=1), BatchNorm2D(6), ReLU(), MaxPool2D(2),
                       Flatten(), Dense(6 * 4 * 4, 4))
    trainer = Trainer(model, Adam(model.parameters(), lr=1e-2), progress=False)
    train = Synthetic(96, shape=(8, 8, 3), num_classes=4, seed=1)
    trainer.fit(Loader(train, 16, shuffle=True, transform=Normalize(MEAN, STD)), epochs=4)
    return trainer


def test_loaders_keep_dataset_order_unless_asked_to_shuffle():
    data = Synthetic(10, shape=(4, 4, 1), num_classes=2, seed=0)
    plain = Loader(data, 4)
    assert plain.shuffle is False
    assert plain.indices(0).tolist() == plain.indices(5).tolist() == list(range(10))
    assert Loader(data, 4, shuffle=True).indices(0).tolist() != list(range(10))


def test_predict_and_evaluate_follow_the_dataset_not_the_loader():
    """The trap: a shuffled loader's predictions compared with the dataset's labels scored
    chance while evaluate said the model was good. Now both read the dataset in order, every
    example once, and agree exactly."""
    trainer = trained()
    test = Synthetic(45, shape=(8, 8, 3), num_classes=4, seed=2)
    shuffled = Loader(test, 8, shuffle=True, drop_last=True, seed=3,
                      transform=Normalize(MEAN, STD))
    result = trainer.evaluate(shuffled)
    probs = trainer.predict(shuffled)
    assert result["count"] == len(test) == len(probs)          # the short last batch counts
    accuracy = float(np.mean(np.argmax(probs, 1) == test.labels))
    assert result["accuracy"] >= 0.9
    assert accuracy == result["accuracy"]
    in_order = trainer.predict(Loader(test, 5, transform=Normalize(MEAN, STD)))
    np.testing.assert_array_equal(probs, in_order)
    assert shuffled.epoch == 0                # evaluating left the loader's epochs alone


def test_evaluate_and_predict_run_in_eval_mode_and_restore_the_modes():
    trainer = trained()
    model = trainer.model
    test = Synthetic(16, shape=(8, 8, 3), num_classes=4, seed=2)
    loader = Loader(test, 8, transform=Normalize(MEAN, STD))
    stats = {k: v.copy() for k, v in model.state_dict().items()}
    model.train()
    model[1].eval()                           # a mixed state the user chose
    modes = [layer.training for layer in model.layers()]
    trainer.evaluate(loader)
    trainer.predict(loader)
    assert [layer.training for layer in model.layers()] == modes
    for k, v in model.state_dict().items():   # no running statistic moved
        np.testing.assert_array_equal(v, stats[k], err_msg=k)
    # fit trains in training mode (the statistics move) and gives the modes back.
    model.eval()
    trainer.fit(loader, epochs=trainer.epoch + 1)
    assert not any(layer.training for layer in model.layers())
    assert not np.array_equal(model.state_dict()["1.running_mean"], stats["1.running_mean"])
