"""The training command behind examples/train_cifar.py and examples/train_folder.py.

    python examples/train_cifar.py --dataset digits --device numpy     # any CPU, no download
    mpirun -n 4 python examples/train_cifar.py                         # CIFAR-10, ResNet-18, GPUs

One run: pick the device, start data-parallel ranks (one process works too), load the dataset
(downloading CIFAR-10 on rank 0 first), split off a validation set, compute the input
normalisation from the training images, build the model, the optimizer (weight decay and L1 on
the weights of convolutions and dense layers, not on biases and batchnorm, unless asked), the
learning-rate schedule and the callbacks, train, evaluate on the test set on all ranks, and on
rank 0 write the checkpoints, logs and pictures into --log-dir:

    best.h5, last.h5            checkpoints (best by validation accuracy, and the last epoch)
    log.csv, tensorboard/       per-epoch figures (tensorboard --logdir <log-dir>/tensorboard)
    curves.png                  loss, accuracy and learning rate per epoch
    confusion_matrix.png        on the test set
    predictions.png             sample test images with true and predicted classes
    summary.json                the run's configuration and final figures

Every dataset has a recipe, COMMON_DEFAULTS with its RECIPES entry on top (DATASET_DEFAULTS),
that any option overrides.
"""
import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import devices as _device
from .distributed.watchdog import DEFAULT_TIMEOUT as COLLECTIVE_TIMEOUT

# What every dataset's recipe starts from; RECIPES says where each differs.
COMMON_DEFAULTS = dict(momentum=0.9, nesterov=False, weight_decay=0.0, onecycle_warmup=0.3,
                       label_smoothing=0.0, augment=False, augment_style="crop-flip",
                       val_fraction=0.1, image_size=None)
RECIPES = {
    # CIFAR-10: ResNet-18 (3x3 stem), SGD with Nesterov momentum, one-cycle learning rate peaking
    # at 0.4 for a global batch of 512, weight decay 5e-4 on weights, label smoothing 0.1, random
    # crops (padding 4) and flips: a standard recipe for about 95% in 40 epochs.
    "cifar10": dict(model="resnet18", epochs=40, batch_size=512, optimizer="sgd", lr=0.4,
                    nesterov=True, weight_decay=5e-4, schedule="onecycle", onecycle_warmup=0.25,
                    label_smoothing=0.1, augment=True),
    # Digits: the recipe of benchmarks/digits.py (measured there: 98.9-99.4% test accuracy over
    # ten seeds, about 20 s of training on 2 CPU cores): a two-block CNN, Adam with a one-cycle
    # learning rate, batch 32, 15 epochs, all 1,438 training images, no augmentation.
    "digits": dict(model="simple_cnn", epochs=15, batch_size=32, optimizer="adam", lr=3e-3,
                   schedule="onecycle", augment_style="affine-small", val_fraction=0.0,
                   model_kwargs={"simple_cnn": dict(widths=(32, 64), convs_per_block=2,
                                                    block_dropout=(0.1, 0.2), hidden=128,
                                                    head_dropout=0.3)}),
    "synthetic": dict(model="simple_cnn", epochs=5, batch_size=128, optimizer="adam", lr=1e-3,
                      schedule="cosine"),
    "folder": dict(model="resnet18", epochs=30, batch_size=64, optimizer="adam", lr=1e-3,
                   weight_decay=1e-4, schedule="plateau", augment=True, augment_style="affine",
                   val_fraction=0.15, image_size=128),
}
DATASET_DEFAULTS = {kind: {**COMMON_DEFAULTS, **recipe} for kind, recipe in RECIPES.items()}


# ------------------------------------------------------------------------------- arguments

def dataset_kind(spec):
    return "folder" if spec.startswith("folder:") else spec


def build_parser(description, default_dataset="cifar10"):
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=default_dataset,
                   help="cifar10, digits, synthetic, or folder:PATH (root/<class>/*.jpg)")
    d.add_argument("--data-dir", default="data", help="where CIFAR-10 is (or is downloaded to), "
                   "and where image-folder caches go")
    d.add_argument("--image-size", type=int, help="folder datasets: resize images to this "
                   "square size (with --crop: keep the aspect ratio, cut the centre)")
    d.add_argument("--crop", action="store_true", help="folder datasets: centre-crop")
    d.add_argument("--skip-bad-images", action="store_true",
                   help="folder datasets: skip unreadable images with a warning")
    d.add_argument("--val-fraction", type=float, help="fraction of the training set held out "
                   "for validation (stratified; 0: none)")
    d.add_argument("--synthetic-size", type=int, default=5000,
                   help="synthetic: training examples (a fifth as many for the test set)")
    d.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="augment the training batches on the device")
    d.add_argument("--augment-style", choices=["crop-flip", "affine", "affine-small"],
                   help="crop-flip: random crop with padding 4 and horizontal flip; affine: "
                        "Keras-style rotation 15, shifts 0.1, zoom 0.1 and flips; affine-small: "
                        "rotation 10, shifts 0.1, zoom 0.1, no flip (digits)")
    m = p.add_argument_group("model and optimisation")
    m.add_argument("--model", help="simple_cnn, resnet18, resnet34, resnet50")
    m.add_argument("--stem", choices=["auto", "cifar", "imagenet"], default="auto",
                   help="ResNets: the 3x3 CIFAR stem or ImageNet's 7x7 stride-2 stem and "
                        "max-pool (auto: cifar up to 64 pixels); imagenet for ImageNet weights")
    m.add_argument("--epochs", type=int)
    m.add_argument("--batch-size", type=int, help="global batch, divided among the ranks")
    m.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    m.add_argument("--lr", type=float, help="learning rate (the peak for one-cycle)")
    m.add_argument("--momentum", type=float)
    m.add_argument("--nesterov", action=argparse.BooleanOptionalAction)
    m.add_argument("--weight-decay", type=float, help="L2 penalty (decoupled for adamw)")
    m.add_argument("--l1", type=float, default=0.0, help="L1 penalty")
    m.add_argument("--penalize", choices=["weights", "all", "head"], default="weights",
                   help="which parameters get weight decay and L1: conv/dense weights, "
                        "everything, or only the final dense layer")
    m.add_argument("--label-smoothing", type=float)
    m.add_argument("--schedule", choices=["onecycle", "cosine", "step", "plateau", "none"])
    m.add_argument("--onecycle-warmup", type=float,
                   help="one-cycle: the fraction of the steps spent raising the learning rate")
    m.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="linear warm-up before cosine or step schedules")
    m.add_argument("--step-size", type=int, default=30, help="step schedule: epochs per decay")
    m.add_argument("--gamma", type=float, default=0.1, help="step schedule: decay factor")
    m.add_argument("--early-stopping", type=int, default=0, metavar="PATIENCE",
                   help="stop when validation loss has not improved for this many epochs "
                        "(0: never), restoring the best weights")
    m.add_argument("--plateau-patience", type=int, default=3,
                   help="plateau schedule: epochs without improvement before lr x 0.1")
    m.add_argument("--pretrained", metavar="FILE",
                   help="start from these weights (a torchvision .pth, .npz or cupycnn .h5; "
                        "tensors of another shape, such as the head, keep their init)")
    m.add_argument("--freeze-backbone", action="store_true",
                   help="train only the final dense layer (transfer learning)")
    m.add_argument("--collective-timeout", type=float, default=COLLECTIVE_TIMEOUT,
                   metavar="SECONDS",
                   help="data-parallel: a rank that waits this long in one collective names the "
                        "ranks that have not arrived (with the step and the collective) and "
                        "aborts the job; 0: wait forever")
    m.add_argument("--bucket-mb", type=float, default=25.0,
                   help="data-parallel: gradient all-reduce bucket size in MB (smaller buckets "
                        "start earlier during backward: more overlap, more messages)")
    m.add_argument("--sync-bn", action="store_true",
                   help="data-parallel: batchnorm statistics over the global batch")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", choices=["auto", "cuda", "sim", "numpy"])
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--log-dir", help="where checkpoints, logs and pictures go "
                   "(default runs/<dataset>-<model>)")
    r.add_argument("--checkpoint", help="the last-epoch checkpoint (default <log-dir>/last.h5)")
    r.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    r.add_argument("--epochs-per-run", type=int, metavar="N",
                   help="stop after N epochs of this run (the schedule still spans --epochs): "
                        "long trainings in jobs with a time limit, continued with --resume")
    r.add_argument("--cuda-graph", action="store_true",
                   help="record the training step once and replay it (a CUDA graph on cuda, "
                        "the launch list on sim; a short last batch runs eagerly)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--summary", action="store_true", help="print the model's layers")
    return p


def parse_args(parser, argv=None):
    """Parse, then fill what was not given from the dataset's defaults."""
    args = parser.parse_args(argv)
    kind = dataset_kind(args.dataset)
    if kind not in DATASET_DEFAULTS:
        parser.error(f"unknown dataset {args.dataset!r}: expected cifar10, digits, synthetic or "
                     f"folder:PATH")
    for key, value in DATASET_DEFAULTS[kind].items():
        if key != "model_kwargs" and getattr(args, key, None) is None:
            setattr(args, key, value)
    # A dataset's recipe may shape its default model (digits: a two-block simple_cnn).
    args.model_kwargs = DATASET_DEFAULTS[kind].get("model_kwargs", {}).get(args.model, {})
    if args.log_dir is None:
        name = Path(args.dataset[7:]).name if kind == "folder" else kind
        args.log_dir = os.path.join("runs", f"{name}-{args.model}")
    if args.checkpoint is None:
        args.checkpoint = os.path.join(args.log_dir, "last.h5")
    return args


# ------------------------------------------------------------------------------------ data

def load_datasets(args, ctx):
    """(train, val or None, test, classes). Rank 0 downloads or builds caches first."""
    from . import data
    kind = dataset_kind(args.dataset)

    def load():
        if kind == "cifar10":
            return (data.CIFAR10(args.data_dir, train=True, download=True),
                    data.CIFAR10(args.data_dir, train=False, download=True))
        if kind == "digits":            # the fixed, stratified 80/20 split (seed 0)
            return data.Digits(train=True), data.Digits(train=False)
        if kind == "synthetic":
            return (data.Synthetic(args.synthetic_size, shape=(32, 32, 3), seed=args.seed),
                    data.Synthetic(max(1, args.synthetic_size // 5), shape=(32, 32, 3),
                                   seed=args.seed + 1))
        root = Path(args.dataset[len("folder:"):])
        size = args.image_size
        cache_dir = Path(args.data_dir) / "cache"
        cache_dir.mkdir(parents=True, exist_ok=True)
        train_dir, test_dir = data.folder.split_folders(root)

        def folder(path, tag):
            cache = cache_dir / f"{root.name}-{tag}-{size}{'-crop' if args.crop else ''}.h5"
            return data.ImageFolder.cached(path, cache, size=size, crop=args.crop,
                                           skip_bad=args.skip_bad_images)

        if train_dir is not None and test_dir is not None:
            return folder(train_dir, "train"), folder(test_dir, "test")
        full = folder(root, "all")
        return data.train_val_split(full, 0.15, seed=args.seed)     # a held-out test set

    if ctx.rank == 0:
        train, test = load()
    ctx.barrier(watched=False)     # rank 0 may download for long (the download has a deadline)
    if ctx.rank != 0:
        train, test = load()
    val = None
    if args.val_fraction and args.val_fraction > 0:
        train, val = data.train_val_split(train, args.val_fraction, seed=args.seed)
    return train, val, test, list(test.classes)


def make_transforms(args, mean, std):
    from . import data
    evaluation = data.Normalize(mean, std)
    if not args.augment:
        return evaluation, evaluation
    seed = args.seed * 7919 + 17
    if args.augment_style == "crop-flip":
        train = data.RandomCropFlip(padding=4, mean=mean, std=std, seed=seed)
    elif args.augment_style == "affine":
        train = data.ImageDataGenerator(rotation_range=15, width_shift_range=0.1,
                                        height_shift_range=0.1, zoom_range=0.1,
                                        horizontal_flip=True, mean=mean, std=std, seed=seed)
    else:
        train = data.ImageDataGenerator(rotation_range=10, width_shift_range=0.1,
                                        height_shift_range=0.1, zoom_range=0.1,
                                        horizontal_flip=False, mean=mean, std=std, seed=seed)
    return train, evaluation


# ----------------------------------------------------------------------------------- model

def model_config(args, image_shape, num_classes):
    """The checkpoint's config: what examples/predict.py needs to rebuild and feed the model."""
    h, w, c = image_shape
    kwargs = {"num_classes": num_classes, "in_channels": c, **args.model_kwargs}
    if args.model == "simple_cnn":
        if h != w:
            raise ValueError(f"simple_cnn takes square images; these are {h}x{w}")
        kwargs["input_size"] = h
    else:
        kwargs["stem"] = args.stem if args.stem != "auto" else (
            "cifar" if max(h, w) <= 64 else "imagenet")
    return {"model": args.model, "model_kwargs": kwargs, "input_shape": [c, h, w],
            "resize": [args.image_size, args.image_size] if args.image_size and
            dataset_kind(args.dataset) == "folder" else None,
            "crop": bool(args.crop), "dataset": args.dataset}


def parameter_groups(model, args):
    """Weight decay and L1 where --penalize says, none elsewhere."""
    from .layers import Conv2D, Dense
    penalized, free = [], []
    last_dense = [layer for layer in model.layers() if isinstance(layer, Dense)][-1:]
    for _, p in model.named_parameters():
        if args.freeze_backbone and p.layer not in last_dense:
            continue                       # not in the optimizer: never updated
        if args.penalize == "all":
            wanted = True
        elif args.penalize == "head":
            wanted = p.layer in last_dense and p.key == "weight"
        else:
            wanted = isinstance(p.layer, (Conv2D, Dense)) and p.key == "weight"
        (penalized if wanted else free).append(p)
    groups = [{"params": penalized, "weight_decay": args.weight_decay, "l1": args.l1}]
    if free:
        groups.append({"params": free, "weight_decay": 0.0, "l1": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(model, args):
    from . import optim
    groups = parameter_groups(model, args)
    if args.optimizer == "sgd":
        return optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov)
    if args.optimizer == "adam":
        return optim.Adam(groups, lr=args.lr)
    return optim.AdamW(groups, lr=args.lr)


def build_schedule(optimizer, args, steps_per_epoch):
    """(schedule, interval) for the Trainer, or (None, "epoch")."""
    from .optim import schedules
    if args.schedule == "onecycle":
        return schedules.OneCycleLR(optimizer, max_lr=args.lr,
                                    total_steps=args.epochs * steps_per_epoch,
                                    pct_start=args.onecycle_warmup), "step"
    if args.schedule in ("cosine", "step"):
        warmup = int(round(args.warmup_epochs * steps_per_epoch))
        total = args.epochs * steps_per_epoch
        if args.schedule == "cosine":
            main = schedules.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
        else:
            main = schedules.StepLR(optimizer, step_size=args.step_size * steps_per_epoch,
                                    gamma=args.gamma)
        if warmup:
            return schedules.LinearWarmup(optimizer, warmup, after=main), "step"
        return main, "step"
    return None, "epoch"


# ------------------------------------------------------------------------------------- run

def main(description, default_dataset="cifar10", argv=None):
    args = parse_args(build_parser(description, default_dataset), argv)
    from . import distributed
    try:
        if args.device != "auto":
            _device.use(args.device)
        ctx = distributed.init(_device.device(), bucket_bytes=int(args.bucket_mb * 2**20),
                               collective_timeout=args.collective_timeout)
    except (_device.DeviceUnavailableError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    previous = _terminate_as_interrupt()
    try:
        with ctx.abort_on_error():
            try:
                return run(args, ctx)
            except KeyboardInterrupt as e:
                return _interrupted(args, ctx, e)
            except _user_errors() as e:
                if ctx.size > 1:
                    raise                  # abort_on_error prints the rank and stops the job
                print(f"error: {e}", file=sys.stderr)
                return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler ending the job, `kill`), raised like Ctrl-C: a checkpoint being
    written completes first (cupycnn.atomic), then the run ends with one line."""


def _terminate_as_interrupt():
    """SIGTERM raises Terminated in the main thread (the previous handler, or None)."""
    def handler(signum, frame):
        raise Terminated()
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:                   # not the main thread
        return None


def _interrupted(args, ctx, error):
    """Ctrl-C or SIGTERM: one line saying where the last checkpoint is; exit status 130/143."""
    from .checkpoint import CheckpointError, load_checkpoint
    status, what = (143, "terminated (SIGTERM)") if isinstance(error, Terminated) else \
        (130, "interrupted (Ctrl-C)")
    if ctx.rank == 0:
        trainer = getattr(args, "trainer", None)
        where = f" during epoch {trainer.epoch + 1}" if trainer is not None else ""
        try:
            saved = load_checkpoint(args.checkpoint)
            last = (f"the last checkpoint is {args.checkpoint} (after epoch {saved.epoch}, "
                    f"step {saved.step}); continue with --resume")
        except CheckpointError:
            last = f"no checkpoint was written yet ({args.checkpoint})"
        print(f"cupycnn: {what}{where}; {last}", file=sys.stderr, flush=True)
    if ctx.size > 1 and ctx.mpi is not None:
        ctx.mpi.Abort(status)             # the other ranks may be waiting in a collective
    return status


def _user_errors():
    from .checkpoint import CheckpointError
    from .data import BadImageError, CacheMismatchError, DatasetNotFoundError
    from .atomic import WriteError
    return (DatasetNotFoundError, BadImageError, CacheMismatchError, CheckpointError,
            FileNotFoundError, ValueError, WriteError)


def _say(ctx, message):
    if ctx.rank == 0:
        print(message, flush=True)


def run(args, ctx):
    """One training run: load the data, build the training, fit, report. Returns the exit code."""
    from . import random
    started = time.perf_counter()
    random.manual_seed(args.seed)
    if ctx.rank == 0:                 # before the data: a read-only or missing folder now
        from .atomic import check_writable
        check_writable(args.log_dir, "logs and checkpoints")
        check_writable(Path(os.path.abspath(args.checkpoint)).parent, "checkpoints")
    loaded = load_data(args, ctx)
    trainer = build_training(args, ctx, loaded)
    trained_at = time.perf_counter()
    stop_at = None if not args.epochs_per_run else trainer.epoch + args.epochs_per_run
    history = trainer.fit(loaded.train_loader, args.epochs, val_loader=loaded.val_loader,
                          stop_at=stop_at)
    train_seconds = time.perf_counter() - trained_at
    return report(args, ctx, trainer, loaded, history, train_seconds, started)


@dataclasses.dataclass
class LoadedData:
    """The datasets, their loaders for this rank, and the input normalisation."""
    train: object
    val: object                  # None without a validation split
    test: object
    classes: list
    mean: list                   # per channel, in 0..1 units, from the training images
    std: list
    eval_transform: object
    per_rank: int                # this rank's batch size
    train_loader: object
    val_loader: object
    test_loader: object


def load_data(args, ctx):
    """The datasets, the normalisation computed from the training images, the transforms and
    this rank's loaders."""
    from . import data
    train, val, test, classes = load_datasets(args, ctx)
    mean, std = data.channel_stats(train.images)       # in 0..1 units, per channel
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    train_tf, eval_tf = make_transforms(args, mean, std)
    per_rank = ctx.per_rank_batch(args.batch_size)
    train_loader = data.Loader(train, per_rank, shuffle=True, drop_last=True, seed=args.seed,
                               transform=train_tf, rank=ctx.rank, world_size=ctx.size)
    if len(train_loader) == 0:
        raise ValueError(f"the training set ({len(train)} examples over {ctx.size} ranks) is "
                         f"smaller than one batch of {per_rank}; lower --batch-size")

    def eval_loader(dataset):
        return data.Loader(dataset, max(per_rank, 256), shuffle=False, transform=eval_tf,
                           rank=ctx.rank, world_size=ctx.size, pad=False)

    return LoadedData(train, val, test, classes, mean, std, eval_tf, per_rank, train_loader,
                      eval_loader(val) if val is not None else None, eval_loader(test))


def build_callbacks(args, ctx, validated):
    """Checkpoints, CSV and TensorBoard logs (where tensorboardX is installed), and what
    --early-stopping and --schedule plateau ask for; `validated`: whether there is a validation
    set to monitor."""
    from .train import CSVLogger, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, TensorBoard
    monitor = "val_loss" if validated else "loss"
    callbacks = [ModelCheckpoint(best=os.path.join(args.log_dir, "best.h5") if validated
                                 else None, last=args.checkpoint, monitor="val_accuracy"),
                 CSVLogger(os.path.join(args.log_dir, "log.csv"))]
    try:
        import tensorboardX  # noqa: F401
        callbacks.append(TensorBoard(os.path.join(args.log_dir, "tensorboard")))
    except ImportError:
        if ctx.is_root:    # e.g. a GPU image without it: train anyway, say what is missing
            print("cupycnn: tensorboardX is not installed, so no TensorBoard logs "
                  "(pip install tensorboardX); log.csv has the same figures", file=sys.stderr)
    if args.early_stopping:
        callbacks.append(EarlyStopping(monitor=monitor, patience=args.early_stopping,
                                       restore_best=True))
    if args.schedule == "plateau":
        callbacks.append(ReduceLROnPlateau(monitor=monitor, factor=0.1,
                                           patience=args.plateau_patience, min_lr=args.lr * 1e-3))
    return callbacks


def build_training(args, ctx, loaded):
    """The Trainer: model (pretrained weights, sync-BN), optimizer, schedule, callbacks, the
    ranks agreed on all of it; resumed when asked. Says what it built on rank 0."""
    from . import models
    from .losses import SoftmaxCrossEntropy
    from .train import Trainer
    image_shape = loaded.train.image_shape
    config = model_config(args, image_shape, len(loaded.classes))
    model = models.build(config["model"], **config["model_kwargs"])
    if args.pretrained:
        from .models.pretrained import load_pretrained
        report = load_pretrained(model, args.pretrained)
        kept = ", ".join(f"{n} {tuple(a)} -> {tuple(b)}" for n, a, b in report.skipped)
        _say(ctx, f"loaded {len(report.loaded)} tensors from {args.pretrained}"
                  + (f"; kept the new initialisation of {kept}" if kept else ""))
    if args.sync_bn and ctx.size > 1:
        ctx.synchronize_batchnorm(model)
    optimizer = build_optimizer(model, args)
    schedule, interval = build_schedule(optimizer, args, len(loaded.train_loader))
    callbacks = build_callbacks(args, ctx, loaded.val is not None)
    ctx.broadcast_parameters(model)
    ctx.check_consistency(model, optimizer, args.batch_size, dataset=args.dataset,
                          epochs=args.epochs, seed=args.seed, train_examples=len(loaded.train),
                          batches_per_epoch=len(loaded.train_loader), sync_bn=args.sync_bn)
    trainer = Trainer(model, optimizer, SoftmaxCrossEntropy(label_smoothing=args.label_smoothing),
                      scheduler=schedule, scheduler_interval=interval,
                      callbacks=callbacks, distributed=ctx,
                      progress=not args.no_progress, config=config, classes=loaded.classes,
                      normalization={"mean": loaded.mean, "std": loaded.std},
                      cuda_graph=args.cuda_graph)
    args.trainer = trainer                 # for the line an interrupt prints
    if args.resume:
        if not os.path.exists(args.checkpoint):
            raise FileNotFoundError(f"--resume: no checkpoint at {args.checkpoint}")
        trainer.resume(args.checkpoint)
        _say(ctx, f"resumed from {args.checkpoint} after epoch {trainer.epoch}")

    val_count = len(loaded.val) if loaded.val is not None else 0
    _say(ctx, f"cupycnn: {args.dataset}: {len(loaded.train)} training, {val_count} validation, "
              f"{len(loaded.test)} test images "
              f"{image_shape[0]}x{image_shape[1]}x{image_shape[2]}, {len(loaded.classes)} "
              f"classes; {args.model} with {model.num_parameters():,} parameters; device "
              f"{_device.device()}, {ctx.size} rank(s) ({ctx.backend}), batch {args.batch_size} "
              f"({loaded.per_rank} per rank), {args.optimizer} lr {args.lr}, schedule "
              f"{args.schedule}")
    if args.summary and ctx.rank == 0:
        model.summary(tuple(config["input_shape"]))
    return trainer


def report(args, ctx, trainer, loaded, history, train_seconds, started):
    """Evaluate on the test set on all ranks; on rank 0 draw the pictures and write
    summary.json into --log-dir. Returns the exit code."""
    from .train import plots
    test = loaded.test
    result = trainer.evaluate(loaded.test_loader, desc="test")
    probabilities = trainer.predict(loaded.test_loader)
    shard = loaded.test_loader.indices()
    gathered = ctx.allgather((shard, np.argmax(probabilities, axis=1)))
    _say(ctx, f"test: loss {result['loss']:.4f}, accuracy {100 * result['accuracy']:.2f}% "
              f"({result['count']} images); training took {train_seconds:.1f} s")
    if ctx.rank != 0:
        return 0
    order = np.concatenate([s for s, _ in gathered])
    predicted = np.concatenate([p for _, p in gathered])
    labels = np.asarray(test.labels)[order]
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    title = f"{args.model} on {args.dataset}"
    plots.plot_history(history, log_dir / "curves.png", title=title)
    counts = plots.confusion_matrix(labels, predicted, len(loaded.classes))
    plots.plot_confusion_matrix(counts, loaded.classes, log_dir / "confusion_matrix.png",
                                title=f"{title}, test set")
    sample = np.arange(min(32, len(test)))
    sample_probs = trainer.predict(loaded.eval_transform(
        _device.asarray(np.asarray(test.images)[sample])))
    plots.plot_predictions(np.asarray(test.images)[sample], np.asarray(test.labels)[sample],
                           sample_probs, loaded.classes, log_dir / "predictions.png")
    summary = {"dataset": args.dataset, "model": args.model, "device": _device.device(),
               "ranks": ctx.size, "epochs": trainer.epoch, "batch_size": args.batch_size,
               "test_loss": result["loss"], "test_accuracy": result["accuracy"],
               "train_seconds": train_seconds,
               "seconds_total": time.perf_counter() - started,
               "best_val_accuracy": max(history.get("val_accuracy", [math.nan])),
               "arguments": {k: v for k, v in vars(args).items() if k != "trainer"},
               "history": dict(history)}
    (log_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {args.checkpoint}, {log_dir / 'log.csv'}, {log_dir / 'tensorboard'}, "
          f"curves.png, confusion_matrix.png, predictions.png, summary.json in {log_dir}")
    return 0
