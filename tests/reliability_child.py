"""Processes that tests/test_reliability_writes.py interrupts, kills and starves of disk.

    python reliability_child.py train DIR EPOCHS     train (resuming from DIR/last.h5 if there),
                                                     checkpointing every epoch and mid-epoch
    python reliability_child.py saves DIR            save checkpoints of DIR/last.h5 forever
    python reliability_child.py full-disk DIR        saves and logs on a full disk (tmpfs)
    python reliability_child.py read-only DIR        every writer in a read-only folder
"""
import os
import sys
from pathlib import Path

import numpy as np

import cupycnn

cupycnn.use("numpy")

from cupycnn import atomic  # noqa: E402
from cupycnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from cupycnn.data import Loader, RandomCropFlip, Synthetic  # noqa: E402
from cupycnn.layers import Dense, Dropout, Flatten, ReLU, Sequential  # noqa: E402
from cupycnn.losses import SoftmaxCrossEntropy  # noqa: E402
from cupycnn.optim import SGD  # noqa: E402
from cupycnn.optim.schedules import OneCycleLR  # noqa: E402
from cupycnn.train import Callback, CSVLogger, ModelCheckpoint, Trainer  # noqa: E402

BATCHES = 6


class SaveEvery(Callback):
    """A mid-epoch checkpoint every `every` steps (as a long epoch would want)."""

    def __init__(self, path, every):
        self.path, self.every = path, every

    def on_batch_end(self, step, logs=None):
        if step % self.every == 0:
            self.trainer.save_checkpoint(self.path)


def run(folder, epochs):
    """The run under test: a few-MB model (so that a save takes a while and kills land in it),
    dropout, augmentation, a one-cycle schedule; deterministic on numpy."""
    folder = Path(folder)
    cupycnn.manual_seed(0)
    data = Synthetic(16 * BATCHES, shape=(16, 16, 3), num_classes=4, seed=1)
    loader = Loader(data, batch_size=16, seed=2,
                    transform=RandomCropFlip(padding=2, mean=(0.5,) * 3, std=(0.25,) * 3, seed=3))
    model = Sequential(Flatten(), Dense(16 * 16 * 3, 512), ReLU(), Dropout(0.2), Dense(512, 4))
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
    schedule = OneCycleLR(optimizer, max_lr=0.1, total_steps=epochs * BATCHES)
    last = folder / "last.h5"
    trainer = Trainer(model, optimizer, SoftmaxCrossEntropy(), scheduler=schedule,
                      scheduler_interval="step", progress=False,
                      callbacks=[ModelCheckpoint(last=last), CSVLogger(folder / "log.csv"),
                                 SaveEvery(last, 4)])
    if last.exists():
        trainer.resume(last)
    trainer.fit(loader, epochs=epochs)
    return trainer


def saves(folder):
    model = Dense(1024, 1024)
    epoch = 0
    while True:
        epoch += 1
        save_checkpoint(Path(folder) / "last.h5", model=model, epoch=epoch)


def full_disk(folder):
    """On a tiny tmpfs: a checkpoint that does not fit, twice (refused up front, and failing
    mid-write with the up-front check disabled), and a CSV log that does not fit."""
    folder = Path(folder)
    small = Dense(8, 4)
    save_checkpoint(folder / "last.h5", model=small, epoch=1)          # fits
    (folder / "log.csv").write_text("epoch,loss\n1,0.5\n")
    big = Dense(1024, 1024)                                           # 4 MB, the disk is 1 MB
    for label in ("up front", "mid-write"):
        if label == "mid-write":
            atomic.check_free_space = lambda *a, **k: None
        try:
            save_checkpoint(folder / "last.h5", model=big, epoch=2)
        except CheckpointError as e:
            print(f"{label}: {type(e).__name__}: {e}")
    print("kept epoch", load_checkpoint(folder / "last.h5").epoch)
    from cupycnn.train.trainer import History

    class Stub:
        is_root = True
        history = History()

    logger = CSVLogger(folder / "log.csv")
    logger.set_trainer(Stub())
    filler = folder / "filler"
    try:                                           # fill what is left
        with open(filler, "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass
    for epoch in range(1000):
        Stub.history.append(epoch, {"loss": 0.123456789, "accuracy": 0.5})
    try:
        logger.on_epoch_end(999, {"loss": 0.1})
    except OSError as e:
        print(f"csv: {type(e).__name__}: {e}")
    print("log", (folder / "log.csv").read_text(encoding="utf-8").replace("\n", "|"))
    print("partials", sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial")))


def read_only(folder):
    """Every writer, in a read-only folder: one line each, "<writer>: <error>"."""
    from cupycnn.data import write_shards, write_tfrecords
    from cupycnn.data.folder import write_hdf5
    from cupycnn.train import TensorBoard
    from cupycnn.train.trainer import History

    class Stub:
        is_root = True
        model = Dense(2, 2)
        optimizer = None
        history = History()

    Stub.history.append(0, {"loss": 1.0})
    writers = [
        ("save_checkpoint", lambda: save_checkpoint(f"{folder}/c.h5", model=Dense(2, 2))),
        ("write_hdf5", lambda: write_hdf5(f"{folder}/cache.h5", np.zeros((1, 2, 2, 3), np.uint8),
                                          [0], ["a"])),
        ("CSVLogger.on_epoch_end", lambda: _with(CSVLogger(f"{folder}/log.csv"), Stub)
         .on_epoch_end(0, {"loss": 1.0})),
        ("CSVLogger.on_train_begin", lambda: _with(CSVLogger(f"{folder}/log.csv"), Stub)
         .on_train_begin({})),
        ("ModelCheckpoint.on_train_begin", lambda: _with(ModelCheckpoint(
            last=f"{folder}/last.h5"), Stub).on_train_begin({})),
        ("TensorBoard.on_train_begin", lambda: _with(TensorBoard(f"{folder}/tb"), Stub)
         .on_train_begin({})),
        ("write_shards", lambda: write_shards([("s0", b"x" * 10, "png", 0)], f"{folder}/shards")),
        ("write_tfrecords", lambda: write_tfrecords([(b"x" * 10, 0)], f"{folder}/records")),
    ]
    for name, write in writers:
        try:
            write()
        except OSError as e:
            print(f"{name}: {type(e).__name__}: {e}")
        else:
            print(f"{name}: wrote")


def _with(callback, trainer):
    callback.set_trainer(trainer())
    return callback


if __name__ == "__main__":
    mode, folder = sys.argv[1], sys.argv[2]
    if mode == "train":
        trainer = run(folder, int(sys.argv[3]))
        np.savez(Path(folder) / "final.npz", **trainer.model.state_dict())
    elif mode == "saves":
        saves(folder)
    elif mode == "full-disk":
        full_disk(folder)
    elif mode == "read-only":
        read_only(folder)
    sys.exit(0)
