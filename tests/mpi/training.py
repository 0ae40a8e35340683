"""Run under mpiexec by tests/test_distributed_training.py: exact metrics, rank-0-only output, and
what happens when a rank dies.

    metrics <devices>    sharded evaluation (pad=False, a dataset size no rank count divides)
                         against one process; an epoch of Trainer.fit against one process
    rank0 <directory>    a short Trainer.fit with every writing callback, each rank pointed at
                         <directory>/rank<r>: only rank 0's may fill up
    die <how>            rank 1 dies in the middle of training (how: kill = SIGKILL, exit3 =
                         os._exit(3), exit0 = os._exit(0), sysexit = sys.exit(2) inside
                         abort_on_error, raise = an exception inside abort_on_error) while the
                         others go on into the gradient all-reduce
"""
import os
import signal
import sys

import numpy as np

import cupycnn
from cupycnn import distributed
from cupycnn.data import Loader, Normalize, Synthetic
from cupycnn.layers import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential
from cupycnn.optim import SGD
from cupycnn.train import CSVLogger, EarlyStopping, ModelCheckpoint, TensorBoard, Trainer

CLASSES = 4
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def small_model():
    cupycnn.manual_seed(0)
    return Sequential(Conv2D(3, 4, 3, padding=1, bias=False), BatchNorm2D(4), ReLU(),
                      MaxPool2D(2), Flatten(), Dense(4 * 4 * 4, CLASSES))


def trainer_for(model, ctx=None, **kwargs):
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    if ctx is not None:
        ctx.broadcast_parameters(model)
        ctx.synchronize_batchnorm(model)
    return Trainer(model, optimizer, distributed=ctx, **kwargs)


def loader(data, batch_size, rank=0, world_size=1, **kwargs):
    return Loader(data, batch_size=batch_size, rank=rank, world_size=world_size, prefetch=False,
                  transform=Normalize(MEAN, STD), **kwargs)


def metrics(ctx, devices):
    """Evaluation: the ranks' shares (pad=False) are the dataset exactly once, and the sums
    [loss * n, correct, n] all-reduced over the ranks give the one-process figures: the count
    and the accuracy exactly (integers), the loss to float32 rounding (a batch's loss is the
    float32 mean over the batch, and the batches differ). With batch size 1 on both sides the
    loss is exact too: each example's float32 loss is then the same number on both sides, and
    their float64 sum is exact in any order (float32 values whose magnitudes span less than
    2^(29 - log2 n), which the check below confirms, add up in float64 without rounding)."""
    n = 23                                       # no rank count from 2 to 4 divides 23 (or 24)
    data = Synthetic(n, shape=(8, 8, 3), num_classes=CLASSES, seed=11)
    for device in devices:
        cupycnn.use(device)
        for batch in (1, 4):
            shard = loader(data, batch, ctx.rank, ctx.size, shuffle=True, seed=3, pad=False)
            sharded = trainer_for(small_model(), ctx, progress=False).evaluate(shard)
            everyone = ctx.allgather(sharded)
            assert all(result == everyone[0] for result in everyone), "ranks disagree"
            # A padded, shuffled training loader serves repeated examples; evaluate reads its
            # dataset in order, every example once (Loader.in_order), so the figures are the
            # same as the exact shards'.
            padded = loader(data, batch, ctx.rank, ctx.size, shuffle=True, seed=3, pad=True)
            served = ctx.allgather(sum(len(y) for _, y in padded))
            padded_result = trainer_for(small_model(), ctx, progress=False).evaluate(padded)
            # predict on a sharded, shuffled loader: every rank gets every row, in dataset order.
            probs = trainer_for(small_model(), ctx, progress=False).predict(padded)
            alone = trainer_for(small_model(), progress=False).predict(loader(data, batch))
            assert probs.shape == (n, CLASSES), probs.shape
            np.testing.assert_allclose(probs, alone, rtol=1e-5, atol=1e-7)
            if ctx.rank != 0:
                continue
            assert sum(served) == -(-n // ctx.size) * ctx.size != n, served
            assert padded_result == sharded, (padded_result, sharded)
            single = trainer_for(small_model(), progress=False)
            reference = single.evaluate(loader(data, batch if batch == 1 else 5, shuffle=False))
            assert sharded["count"] == reference["count"] == n, (sharded, reference)
            assert sharded["accuracy"] == reference["accuracy"], (sharded, reference)
            if batch == 1:
                losses = [float(single.loss.forward(single.model.forward(x, training=False), y))
                          for x, y in loader(data, 1, shuffle=False)]
                spread = np.log2(max(losses) / min(losses))
                assert spread < 29 - np.log2(n), f"losses span 2^{spread:.1f}"
                assert sharded["loss"] == reference["loss"], (sharded, reference)
            else:
                assert abs(sharded["loss"] - reference["loss"]) <= 1e-6 * reference["loss"], \
                    (sharded, reference)
            print(f"OK evaluate {device} batch={batch} ranks={ctx.size} count={n} "
                  f"accuracy={sharded['accuracy']!r} loss={sharded['loss']!r} "
                  f"one-process loss={reference['loss']!r}", flush=True)
        # An epoch of training: the epoch's loss and accuracy are sums over every rank's
        # batches, so they are the one-process figures for the global batch.
        train = Synthetic(16, shape=(8, 8, 3), num_classes=CLASSES, seed=12)
        global_batch = 8
        shard = loader(train, ctx.per_rank_batch(global_batch), ctx.rank, ctx.size,
                       shuffle=True, seed=4)
        history = trainer_for(small_model(), ctx, progress=False).fit(shard, epochs=1)
        everyone = ctx.allgather((history["loss"], history["accuracy"]))
        assert all(h == everyone[0] for h in everyone), "ranks report different figures"
        if ctx.rank == 0:
            single = trainer_for(small_model(), progress=False)
            reference = single.fit(loader(train, global_batch, shuffle=True, seed=4), epochs=1)
            assert history["accuracy"] == reference["accuracy"], (history, reference)
            assert abs(history["loss"][0] - reference["loss"][0]) <= 1e-5 * reference["loss"][0]
            print(f"OK fit {device} ranks={ctx.size} loss={history['loss'][0]!r} one-process "
                  f"loss={reference['loss'][0]!r}", flush=True)


def rank0(ctx, directory):
    """Every rank gets paths of its own, so that a write by any rank but 0 shows."""
    cupycnn.use("numpy")
    out = os.path.join(directory, f"rank{ctx.rank}")
    os.makedirs(out, exist_ok=True)
    train = Synthetic(16, shape=(8, 8, 3), num_classes=CLASSES, seed=12)
    val = Synthetic(8, shape=(8, 8, 3), num_classes=CLASSES, seed=13)
    callbacks = [ModelCheckpoint(best=os.path.join(out, "best.h5"),
                                 last=os.path.join(out, "last.h5")),
                 CSVLogger(os.path.join(out, "log.csv")),
                 TensorBoard(os.path.join(out, "tensorboard")),
                 EarlyStopping(monitor="val_loss", patience=1)]
    trainer = trainer_for(small_model(), ctx, callbacks=callbacks, progress=True)
    history = trainer.fit(loader(train, 4, ctx.rank, ctx.size, shuffle=True, seed=4), epochs=2,
                          val_loader=loader(val, 4, ctx.rank, ctx.size, shuffle=False,
                                            pad=False))
    trainer.save_checkpoint(os.path.join(out, "final.h5"))
    everyone = ctx.allgather(history["val_loss"])
    if ctx.rank == 0:
        print(f"all {ctx.size} ranks trained: {all(h == everyone[0] for h in everyone)}",
              flush=True)


def die(ctx, how):
    cupycnn.use("numpy")
    model = small_model()
    trainer = trainer_for(model, ctx, progress=False)
    data = Synthetic(32, shape=(8, 8, 3), num_classes=CLASSES, seed=12)
    batches = iter(loader(data, 4, ctx.rank, ctx.size, shuffle=True, seed=4))
    with ctx.abort_on_error():
        for step in range(4):
            x, y = next(batches)
            if ctx.rank == 1 and step == 2:
                sys.stdout.flush()
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                elif how == "exit3":
                    os._exit(3)
                elif how == "exit0":
                    os._exit(0)
                elif how == "sysexit":
                    sys.exit(2)
                elif how == "raise":
                    raise RuntimeError("simulated failure on one rank")
            trainer.train_step(x, y, np.zeros(3))   # the others wait in its all-reduce
    print(f"rank {ctx.rank} finished: nobody died", flush=True)


if __name__ == "__main__":
    mode, argument = sys.argv[1], sys.argv[2]
    context = distributed.init(device="numpy")
    if mode == "metrics":
        with context.abort_on_error():
            metrics(context, argument.split(","))
    elif mode == "rank0":
        with context.abort_on_error():
            rank0(context, argument)
    elif mode == "die":
        die(context, argument)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
