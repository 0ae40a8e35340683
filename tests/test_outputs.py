"""Honest outputs: pictures that show what they claim, logs that hold every figure, a progress
bar that counts what the epoch line counts."""
import csv

import numpy as np
import pytest

import cupycnn
from cupycnn.data import Loader, Normalize, Synthetic
from cupycnn.layers import Dense, Flatten, ReLU, Sequential
from cupycnn.optim import SGD
from cupycnn.optim.schedules import OneCycleLR
from cupycnn.train import CSVLogger, TensorBoard, Trainer, plots, trainer as trainer_module


def _figure_of(monkeypatch):
    """Keep the last figure a plot function saves, to look at it."""
    plt = plots._pyplot()
    kept = {}
    original = plt.close

    def close(fig=None):
        kept["fig"] = fig
    monkeypatch.setattr(plt, "close", close)
    return kept, original


def test_confusion_matrix_title_fits_and_keeps_the_accuracy(tmp_path, monkeypatch):
    kept, close = _figure_of(monkeypatch)
    counts = np.array([[40, 2], [5, 53]])
    title = ("resnet18 on folder:/home/someone/datasets/kaggle/animals-15-classes/"
             "Training Data, test set")
    plots.plot_confusion_matrix(counts, ["cat", "dog"], tmp_path / "cm.png", title=title)
    fig = kept["fig"]
    fig.canvas.draw()
    text = fig.axes[0].title
    assert "accuracy 93.00% (100 images)" in text.get_text()
    assert "Training Data" in text.get_text()                   # the whole title, wrapped
    box, frame = text.get_window_extent(), fig.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1
    close(fig)


def test_curves_keep_the_late_epochs_readable(tmp_path, monkeypatch):
    """Accuracy from 10% to 99.5%: on a linear axis 98% and 99.5% sit 1.5% of the axis apart;
    the logit axis keeps them far apart."""
    kept, close = _figure_of(monkeypatch)
    history = {"epoch": [1, 2, 3, 4, 5], "loss": [2.3, 0.5, 0.1, 0.06, 0.04],
               "accuracy": [0.1, 0.9, 0.97, 0.98, 0.995], "lr": [0.1, 0.05, 0.02, 0.01, 0.001],
               "val_accuracy": [0.2, 0.88, 0.96, 0.975, 1.0]}
    plots.plot_history(history, tmp_path / "curves.png")
    ax = kept["fig"].axes[1]
    assert ax.get_yscale() == "logit"
    low, high = ax.get_ylim()
    to_axis = ax.transScale.transform
    span = to_axis([[0, high]])[0][1] - to_axis([[0, low]])[0][1]
    gap = to_axis([[0, 0.995]])[0][1] - to_axis([[0, 0.98]])[0][1]
    assert gap / span > 0.1
    assert low <= 0.1 and high >= 0.995                  # every point in view, 100% included
    close(kept["fig"])


def test_worst_predictions_come_first():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5], [0.99, 0.01]])
    labels = np.array([0, 0, 1, 0, 1])
    # p(true class): 0.9, 0.2, 0.4, 0.5, 0.01
    assert plots.worst_predictions(probs, labels, 3).tolist() == [4, 1, 2]


def run_with_logs(tmp_path, record_test=True):
    cupycnn.use("numpy")
    cupycnn.manual_seed(0)
    data = Synthetic(40, shape=(4, 4, 1), num_classes=2, seed=0)
    loader = Loader(data, 10, shuffle=True, transform=Normalize(0.5, 0.25))
    model = Sequential(Flatten(), Dense(16, 8), ReLU(), Dense(8, 2))
    optimizer = SGD(model.parameters(), lr=0.1)
    schedule = OneCycleLR(optimizer, max_lr=0.1, total_steps=3 * len(loader))
    trainer = Trainer(model, optimizer, scheduler=schedule, scheduler_interval="step",
                      progress=False, callbacks=[CSVLogger(str(tmp_path / "log.csv")),
                                                 TensorBoard(tmp_path / "tb")])
    lrs = []
    original = trainer.train_step

    def step(x, y, sums):
        lrs.append(optimizer.param_groups[0]["lr"])
        original(x, y, sums)
    trainer.train_step = step
    trainer.fit(loader, epochs=3, val_loader=loader)
    if record_test:
        trainer.record_test(trainer.evaluate(loader))
    return trainer, lrs


def test_csv_has_validation_test_and_the_last_steps_learning_rate(tmp_path):
    trainer, lrs = run_with_logs(tmp_path)
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert all(r["val_loss"] and r["val_accuracy"] for r in rows)
    per_epoch = len(lrs) // 3
    assert [float(r["lr"]) for r in rows] == [lrs[per_epoch * (e + 1) - 1] for e in range(3)]
    assert float(rows[0]["lr"]) != lrs[0]                 # not the epoch's first step
    assert [r["test_accuracy"] for r in rows[:2]] == ["", ""]
    result = trainer.evaluate(trainer.loaders[0])
    assert float(rows[-1]["test_accuracy"]) == result["accuracy"]
    assert float(rows[-1]["test_loss"]) == pytest.approx(result["loss"])


def test_tensorboard_has_validation_and_test_figures(tmp_path):
    pytest.importorskip("tensorboardX")
    from test_trainer import _tensorboard_scalars
    trainer, _ = run_with_logs(tmp_path)
    scalars = _tensorboard_scalars(tmp_path / "tb")
    tags = {tag for tag, _, _ in scalars}
    assert {"loss/val", "accuracy/val", "loss/test", "accuracy/test", "lr"} <= tags
    result = trainer.evaluate(trainer.loaders[0])
    assert ("accuracy/test", 3, round(result["accuracy"], 6)) in scalars


def test_the_progress_bar_counts_every_ranks_images(monkeypatch):
    """Under mpirun each rank's loader serves its share: the bar's images per batch are the
    global batch's, as the epoch line's images_per_second is."""
    data = Synthetic(16, shape=(4, 4, 1), num_classes=2, seed=0)
    assert trainer_module._images_per_batch(Loader(data, 4, rank=1, world_size=4)) == 16
    assert trainer_module._images_per_batch(Loader(data, 4)) == 4
    scales = []
    original = trainer_module.Progress

    def recording(*args, **kwargs):
        scales.append(kwargs.get("unit_scale"))
        return original(*args, **kwargs)
    monkeypatch.setattr(trainer_module, "Progress", recording)
    cupycnn.use("numpy")
    model = Sequential(Flatten(), Dense(16, 2))
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1), progress=False)
    trainer.fit(Loader(data, 4, rank=0, world_size=2, transform=Normalize(0.5, 0.25)), epochs=1)
    assert scales == [8]


def test_the_training_command_writes_honest_outputs(tmp_path, capsys):
    """No validation set, early stopping asked, 65 images in batches of 8: the warnings are
    said, summary.json is strict JSON with null where there is no figure, log.csv holds the
    test figures, and only the one example a batch of 1 would hold is left out."""
    import json

    from cupycnn import cli
    log_dir = tmp_path / "run"
    code = cli.main("test", argv=[
        "--dataset", "synthetic", "--synthetic-size", "65", "--val-fraction", "0",
        "--model", "simple_cnn", "--epochs", "1", "--batch-size", "8", "--early-stopping", "1",
        "--device", "numpy", "--no-progress", "--log-dir", str(log_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "--early-stopping watches the training loss: there is no validation set" in err
    assert "1 x 1 training example per epoch left out" in err

    def no_constants(name):
        raise AssertionError(f"summary.json holds {name}, which is not JSON")
    summary = json.loads((log_dir / "summary.json").read_text(encoding="utf-8"),
                         parse_constant=no_constants)
    assert summary["best_val_accuracy"] is None
    with open(log_dir / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["test_accuracy"]) == summary["test_accuracy"]
    assert int(rows[-1]["test_count"]) == 13
    assert "epoch 1/1" in out and "images_per_second" in out
