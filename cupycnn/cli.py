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
from .help_formatter import DefaultsHelpFormatter

# What every dataset's recipe starts from; RECIPES says where each differs.
COMMON_DEFAULTS = dict(momentum=0.9, nesterov=False, weight_decay=0.0, onecycle_warmup=0.3,
                       label_smoothing=0.0, augment=False, augment_style="crop-flip",
                       val_fraction=0.1, image_size=None, blas_threads=0)
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
    # One BLAS thread: its matrix products are too small to share, and a second OpenBLAS
    # thread spins on the other core for nothing (docs/BENCHMARKS.md, the main job).
    "digits": dict(model="simple_cnn", epochs=15, batch_size=32, optimizer="adam", lr=3e-3,
                   schedule="onecycle", augment_style="affine-small", val_fraction=0.0,
                   blas_threads=1,
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


class HelpFormatter(DefaultsHelpFormatter):
    """Each option's default: the dataset recipes' value per dataset where the recipe decides
    it (DATASET_DEFAULTS), else the parser's."""

    def default_for(self, action):
        return _recipe_defaults(action.dest) or super().default_for(action)


def _recipe_defaults(dest):
    """'cifar10: 40, digits: 15, ...' for an option the dataset recipes set ('' otherwise);
    one value where every recipe agrees."""
    values = {kind: recipe[dest] for kind, recipe in DATASET_DEFAULTS.items() if dest in recipe}
    if not values:
        return ""

    def shown(value):
        if value is None:
            return "none"
        if isinstance(value, bool):
            return "on" if value else "off"
        return f"{value:g}" if isinstance(value, float) else str(value)
    if len({shown(v) for v in values.values()}) == 1:
        return shown(next(iter(values.values())))
    return ", ".join(f"{kind}: {shown(v)}" for kind, v in values.items())


def build_parser(description, default_dataset="cifar10", prog=None):
    """The training options (what examples/train_cifar.py, train_folder.py and `cupycnn train`
    take): one add_argument each, in its group; --help shows each one's default, per dataset
    where the recipes differ. `--config FILE` reads a TOML file of the same options, which the
    flags override (parse_args)."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=HelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=default_dataset, metavar="NAME",
                   help="cifar10 (downloaded to --data-dir), digits (scikit-learn's 8x8 digits), "
                        "synthetic (made from the seed), or folder:PATH (PATH/<class>/*.jpg, or "
                        "PATH/train/<class>/ and PATH/test/<class>/)")
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
    d.add_argument("--synthetic-noise", type=float, default=0.2, metavar="SD",
                   help="synthetic: pixel noise, standard deviation as a fraction of 255")
    d.add_argument("--synthetic-similarity", type=float, default=0.0, metavar="SHARE",
                   help="synthetic: the share of every class pattern common to all classes, in "
                        "[0, 1) (a harder task: the classes differ by 1 - this)")
    d.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="augment the training batches on the device")
    d.add_argument("--augment-style", choices=["crop-flip", "affine", "affine-small"],
                   help="crop-flip: random crop with padding 4 and horizontal flip; affine: "
                        "Keras-style rotation 15, shifts 0.1, zoom 0.1 and flips; affine-small: "
                        "rotation 10, shifts 0.1, zoom 0.1, no flip")
    m = p.add_argument_group("model and optimisation")
    m.add_argument("--model", choices=["simple_cnn", "resnet18", "resnet34", "resnet50"],
                   help="the network (cupycnn.models)")
    m.add_argument("--stem", choices=["auto", "cifar", "imagenet"], default="auto",
                   help="ResNets: the 3x3 CIFAR stem or ImageNet's 7x7 stride-2 stem and "
                        "max-pool (auto: cifar up to 64 pixels); imagenet for ImageNet weights")
    m.add_argument("--epochs", type=int, help="passes over the training set")
    m.add_argument("--batch-size", type=int, help="global batch, divided among the ranks")
    m.add_argument("--optimizer", choices=["sgd", "adam", "adamw"],
                   help="SGD (with --momentum, --nesterov), Adam, or AdamW (decoupled weight "
                        "decay)")
    m.add_argument("--lr", type=float, help="learning rate (the peak for one-cycle)")
    m.add_argument("--momentum", type=float, help="SGD's momentum")
    m.add_argument("--nesterov", action=argparse.BooleanOptionalAction,
                   help="SGD: Nesterov momentum")
    m.add_argument("--weight-decay", type=float, help="L2 penalty (decoupled for adamw)")
    m.add_argument("--l1", type=float, default=0.0, help="L1 penalty")
    m.add_argument("--penalize", choices=["weights", "all", "head"], default="weights",
                   help="which parameters get weight decay and L1: conv/dense weights, "
                        "everything, or only the final dense layer")
    m.add_argument("--label-smoothing", type=float,
                   help="cross-entropy against (1 - e) one-hot + e / classes")
    m.add_argument("--schedule", choices=["onecycle", "cosine", "step", "plateau", "none"],
                   help="learning rate: one-cycle (warm-up, cosine down), cosine annealing, "
                        "step decay, divided by 10 on a validation plateau, or constant")
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
    r.add_argument("--config", metavar="FILE",
                   help="a TOML file of these options (epochs = 3, augment = true, dataset = "
                        "\"digits\"; names with - or _); flags given here override it")
    r.add_argument("--device", default="auto", choices=["auto", "cuda", "sim", "numpy"],
                   help="cuda: a GPU; sim: the same CUDA kernels on the CPU emulator; numpy: "
                        "the NumPy reference path; auto: cuda where a GPU is usable, else numpy")
    r.add_argument("--seed", type=int, default=0,
                   help="initialisation, shuffling, dropout, augmentation and the validation "
                        "split")
    r.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32",
                   help="arithmetic of the convolutions and dense layers (cupycnn.set_precision):"
                        " fp32 exact, tf32 or bf16 operands on tensor cores, FP32 accumulation")
    r.add_argument("--log-dir", help="where checkpoints, logs and pictures go "
                   "(default: runs/<dataset>-<model>)")
    r.add_argument("--checkpoint", help="the last-epoch checkpoint (default: <log-dir>/last.h5)")
    r.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    r.add_argument("--epochs-per-run", type=int, metavar="N",
                   help="stop after N epochs of this run (the schedule still spans --epochs): "
                        "long trainings in jobs with a time limit, continued with --resume")
    r.add_argument("--cuda-graph", action="store_true",
                   help="record the training step once and replay it (a CUDA graph on cuda, "
                        "the launch list on sim; a short last batch runs eagerly)")
    r.add_argument("--blas-threads", type=int, metavar="N",
                   help="threads NumPy's BLAS may use on numpy and sim (0: its own choice, all "
                        "cores); 1 where the matrix products are too small to share, as "
                        "digits': a second thread only spins, taking a core from other work")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--summary", action="store_true", help="print the model's layers")
    return p


def training_options(*dests, **defaults):
    """build_parser's options named by `dests`, as actions for another command's parser
    (`group._add_action(action)`): the same flags, types and help, so an option two commands
    share is written once. `defaults` (dest=value) gives some of them that command's default."""
    actions = {a.dest: a for a in build_parser("", default_dataset=None)._actions}
    for dest, value in defaults.items():
        actions[dest].default = value
    return [actions[dest] for dest in dests]


def config_arguments(parser, path):
    """The command-line tokens a TOML config file stands for (placed before the flags, which so
    override it). Keys are option names (with - or _), values of the option's type; a key that
    is no option, or a value of the wrong kind, is a parser error naming it."""
    try:
        import tomllib
    except ModuleNotFoundError:           # Python 3.10
        import tomli as tomllib
    from .safe_hdf5 import check_regular_file
    try:
        check_regular_file(path, OSError, "config file")       # a FIFO would block the open
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        parser.error(f"--config: no file at {path}")
    except OSError as e:
        parser.error(f"--config: {e.strerror if e.filename else e}")
    except tomllib.TOMLDecodeError as e:
        parser.error(f"--config {path}: not a TOML file: {e}")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    tokens = []
    for key, value in table.items():
        dest = str(key).replace("-", "_")
        action = actions.get(dest)
        if action is None or dest in ("config", "help"):
            known = ", ".join(sorted(d.replace("_", "-") for d in actions
                                     if d not in ("config", "help")))
            parser.error(f"--config {path}: {key!r} is not an option of this command; options: "
                         f"{known}")
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
            if not isinstance(value, bool):
                parser.error(f"--config {path}: {key} must be true or false, got {value!r}")
            if isinstance(action, argparse.BooleanOptionalAction):
                tokens.append(flag if value else "--no-" + flag[2:])
            elif value:                                       # store_true
                tokens.append(flag)
        elif isinstance(value, (dict, bool)):
            parser.error(f"--config {path}: {key} takes a value, got {value!r}")
        elif isinstance(value, list):
            tokens += [flag] + [str(v) for v in value]
        else:
            tokens += [flag, str(value)]
    return tokens


def parse_options(parser, argv=None):
    """Parse: a --config file's options first, the flags over them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    known, _ = parser.parse_known_args(argv)
    if getattr(known, "config", None):
        argv = config_arguments(parser, known.config) + argv
    return parser.parse_args(argv)


def parse_args(parser, argv=None):
    """Parse (a --config file first, the flags over it), then fill what was not given from
    the dataset's defaults."""
    args = parse_options(parser, argv)
    kind = dataset_kind(args.dataset)
    if kind not in DATASET_DEFAULTS:
        parser.error(f"unknown dataset {args.dataset!r}: expected cifar10, digits, synthetic or "
                     f"folder:PATH")
    for key, value in DATASET_DEFAULTS[kind].items():
        if key != "model_kwargs" and getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.blas_threads is not None and args.blas_threads < 0:
        parser.error(f"--blas-threads must be 0 (the BLAS's own choice) or more, got "
                     f"{args.blas_threads}")
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
            task = dict(shape=(32, 32, 3), noise=args.synthetic_noise,
                        similarity=args.synthetic_similarity)
            return (data.Synthetic(args.synthetic_size, seed=args.seed, **task),
                    data.Synthetic(max(1, args.synthetic_size // 5), seed=args.seed + 1,
                                   **task))
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
            "crop": bool(args.crop), "dataset": args.dataset, "precision": args.precision}


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

def start(args, prefix=""):
    """Select --device and --precision (where the parser has it), then start the data-parallel
    ranks with --bucket-mb: the context, or None after printing the one-sentence reason
    (`prefix` first) why not (the caller exits with status 2)."""
    from . import distributed
    from .precision import set_precision
    try:
        if args.device != "auto":
            _device.use(args.device)
        if getattr(args, "precision", None) is not None:
            set_precision(args.precision)
        return distributed.init(_device.device(), bucket_bytes=int(args.bucket_mb * 2**20),
                                collective_timeout=getattr(args, "collective_timeout",
                                                           COLLECTIVE_TIMEOUT))
    except (_device.DeviceUnavailableError, ValueError) as e:
        print(f"{prefix}error: {e}", file=sys.stderr)
        return None


def main(description, default_dataset="cifar10", argv=None, prog=None):
    args = parse_args(build_parser(description, default_dataset, prog), argv)
    ctx = start(args)
    if ctx is None:
        return 2
    previous = _terminate_as_interrupt()
    try:
        with ctx.abort_on_error(), blas_threads(args.blas_threads):
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


def blas_threads(count):
    """Hold the BLAS to `count` threads for a block (0 or None: leave it alone)."""
    import contextlib
    if not count:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=int(count), user_api="blas")


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
    # Every example trains every epoch: the last, short batch is kept (as benchmarks/digits.py's
    # recipe keeps it), unless it would hold one example per rank, which batchnorm cannot
    # train on; that one is dropped, and said.
    shard = -(-len(train) // ctx.size)
    drop_last = shard % per_rank == 1 and shard > 1
    if drop_last and ctx.rank == 0:
        print(f"cupycnn: {ctx.size} x 1 training example per epoch left out (the last batch "
              f"would hold 1 example per rank, too few for batchnorm's statistics); another "
              f"--batch-size keeps them", file=sys.stderr)
    train_loader = data.Loader(train, per_rank, shuffle=True, drop_last=drop_last,
                               seed=args.seed, transform=train_tf, rank=ctx.rank,
                               world_size=ctx.size)
    if len(train_loader) == 0 or per_rank > shard:
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
    for option, active in (("--early-stopping", args.early_stopping),
                           ("--schedule plateau", args.schedule == "plateau")):
        if active and not validated and ctx.is_root:
            print(f"cupycnn: warning: {option} watches the training loss: there is no "
                  f"validation set (--val-fraction 0), and the training loss keeps falling "
                  f"while the model overfits; hold one out with --val-fraction 0.1",
                  file=sys.stderr)
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
              f"{_device.device()} at {args.precision}, {ctx.size} rank(s) ({ctx.backend}), "
              f"batch {args.batch_size} ({loaded.per_rank} per rank), {args.optimizer} lr "
              f"{args.lr}, schedule {args.schedule}")
    if args.summary and ctx.rank == 0:
        model.summary(tuple(config["input_shape"]))
    return trainer


def json_text(value):
    """Strict JSON (what json.loads in other languages, jq and browsers accept): NaN and
    infinities, which Python would write as the invalid NaN / Infinity, become null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        if isinstance(v, np.generic):
            return clean(v.item())
        return str(v)
    return json.dumps(clean(value), indent=1, allow_nan=False)


def report(args, ctx, trainer, loaded, history, train_seconds, started):
    """Evaluate on the test set on all ranks; on rank 0 draw the pictures and write
    summary.json into --log-dir. Returns the exit code."""
    from .train import plots
    test = loaded.test
    result = trainer.evaluate(loaded.test_loader, desc="test")
    probabilities = trainer.predict(loaded.test_loader)   # every rank: the whole test set, in order
    _say(ctx, f"test: loss {result['loss']:.4f}, accuracy {100 * result['accuracy']:.2f}% "
              f"({result['count']} images); training took {train_seconds:.1f} s")
    trainer.record_test(result)                           # into log.csv and TensorBoard
    if ctx.rank != 0:
        return 0
    predicted = np.argmax(probabilities, axis=1)
    labels = np.asarray(test.labels)
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    title = f"{args.model} on {args.dataset}"
    plots.plot_history(history, log_dir / "curves.png", title=title)
    counts = plots.confusion_matrix(labels, predicted, len(loaded.classes))
    plots.plot_confusion_matrix(counts, loaded.classes, log_dir / "confusion_matrix.png",
                                title=f"{title}, test set")
    worst = plots.worst_predictions(probabilities, labels, 32)
    plots.plot_predictions(np.asarray(test.images)[worst], labels[worst], probabilities[worst],
                           loaded.classes, log_dir / "predictions.png",
                           title=f"the {len(worst)} test images given the lowest probability of "
                                 f"their true class")
    val_accuracy = [v for v in history.get("val_accuracy", []) if math.isfinite(v)]
    summary = {"dataset": args.dataset, "model": args.model, "device": _device.device(),
               "precision": args.precision,
               "ranks": ctx.size, "epochs": trainer.epoch, "batch_size": args.batch_size,
               "test_loss": result["loss"], "test_accuracy": result["accuracy"],
               "train_seconds": train_seconds,
               "seconds_total": time.perf_counter() - started,
               "best_val_accuracy": max(val_accuracy) if val_accuracy else None,
               "arguments": {k: v for k, v in vars(args).items() if k != "trainer"},
               "history": dict(history)}
    (log_dir / "summary.json").write_text(json_text(summary), encoding="utf-8")
    print(f"wrote {args.checkpoint}, {log_dir / 'log.csv'}, {log_dir / 'tensorboard'}, "
          f"curves.png, confusion_matrix.png, predictions.png, summary.json in {log_dir}")
    return 0
