"""The `cupycnn` command: one entry point for training, evaluation, prediction, the gradient
checks, a throughput benchmark, what this machine offers and the dataset tools.

    cupycnn train --dataset digits --device numpy       # = python examples/train_cifar.py ...
    cupycnn evaluate --checkpoint runs/digits-simple_cnn/last.h5
    cupycnn predict seven.png --checkpoint runs/digits-simple_cnn/last.h5 --top-k 3
    cupycnn gradcheck --device sim --layer Conv2D       # = python -m cupycnn.gradcheck_suite
    cupycnn bench --model resnet18 --batch-size 32 --device numpy
    cupycnn info                                        # devices, versions, GPU, NCCL, MPI
    cupycnn data make-shards photos/train shards/train  # = python -m cupycnn.data ...
    mpirun -n 4 cupycnn train                           # data-parallel, as train_cifar.py

`train` and `bench` take the training options (cupycnn/cli.py's build_parser: one table, so an
option added there is in both, in examples/train_cifar.py and in --config files); `evaluate`
takes its data options. train, evaluate and bench read `--config FILE.toml`, whose values
the flags override; `data` is cupycnn/data/tools.py. `python -m cupycnn` is the same command.
"""
import argparse
import sys

COMMANDS = {
    "train": "train a model (the training options; examples/train_cifar.py)",
    "evaluate": "a checkpoint's loss and accuracy on a dataset's test set",
    "predict": "classify image files with a checkpoint (examples/predict.py)",
    "gradcheck": "check every layer's backward against finite differences",
    "bench": "training-step throughput of a model on this machine",
    "info": "devices, versions, GPU, NCCL and MPI: what is usable here, and why not",
    "data": "dataset tools: a folder of images into tar shards (make-shards), inspect",
}
PROG = "cupycnn"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0] + "\n\n" + "\n".join(
            f"  {name:<10} {what}" for name, what in COMMANDS.items()),
        epilog=f"`{PROG} COMMAND --help` gives a command's options; docs/TUTORIAL.md walks "
               f"through them.")
    top.add_argument("command", choices=list(COMMANDS), metavar="COMMAND",
                     help=", ".join(COMMANDS))
    top.add_argument("--version", action="version", version=_version())
    if not argv:
        top.print_help(sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        top.parse_args(argv[:1])                 # --help, --version, or the error: exits
        return 2
    command, rest = argv[0], argv[1:]
    return {"train": train, "evaluate": evaluate, "predict": predict, "gradcheck": gradcheck,
            "bench": bench, "info": info, "data": data_tools}[command](rest)


def _version():
    from .version import __version__
    return f"{PROG} {__version__}"


# ------------------------------------------------------------------------------ train

TRAIN_DESCRIPTION = """\
Train a CNN or ResNet: CIFAR-10, scikit-learn's digits, a synthetic task or a folder of images,
on one process or data-parallel (mpirun -n N cupycnn train).

    cupycnn train --dataset digits --device numpy          # any CPU, no download
    cupycnn train                                          # CIFAR-10, ResNet-18, the recipe
    cupycnn train --dataset folder:animals/ --image-size 128 --early-stopping 5
    cupycnn train --config digits.toml --epochs 3          # the file's options, then these

Checkpoints (last.h5, best.h5), log.csv, TensorBoard logs, curves.png, confusion_matrix.png,
predictions.png (the worst test predictions) and summary.json go to --log-dir. Each dataset has
a recipe (the defaults below); every option overrides it."""


def train(argv):
    from . import cli
    return cli.main(TRAIN_DESCRIPTION, default_dataset="cifar10", argv=argv, prog=f"{PROG} train")


# --------------------------------------------------------------------------- evaluate

TRAINING_ONLY = ("val_fraction", "augment", "augment_style")


def _parser_with(parser, titles, prog, description):
    """A parser with `parser`'s option groups named `titles`, less the options that only shape
    training (the same option objects: one added to the training options appears here too).
    Its help shows the parser's defaults, not the recipes': evaluate's come from the
    checkpoint."""
    from .help_formatter import DefaultsHelpFormatter
    out = argparse.ArgumentParser(prog=prog, description=description,
                                  formatter_class=DefaultsHelpFormatter)
    for group in parser._action_groups:
        if group.title in titles:
            mine = out.add_argument_group(group.title)
            for action in group._group_actions:
                if action.dest not in TRAINING_ONLY:
                    mine._add_action(action)
    return out


def evaluate(argv):
    """Load a checkpoint, evaluate it on the test set of its dataset (or --dataset)."""
    from . import cli, data
    from . import devices as _device
    from . import distributed
    from .checkpoint import CheckpointError
    from .predict import load_model
    from .train import Trainer

    training = cli.build_parser("", default_dataset=None)
    parser = _parser_with(training, ("data",), f"{PROG} evaluate", """\
A checkpoint's loss and accuracy on a dataset's test set, evaluated as at training (its model
rebuilt from the checkpoint, its input normalisation; every test image once, in order).

    cupycnn evaluate --checkpoint runs/digits-simple_cnn/last.h5
    cupycnn evaluate --checkpoint best.h5 --dataset folder:animals/ --device cuda

The dataset is the one the checkpoint was trained on (its config's "dataset") unless --dataset
names another; image-folder options default to the checkpoint's (resize, crop).""")
    run = parser.add_argument_group("run")
    run.add_argument("--checkpoint", required=True, metavar="FILE",
                     help="a checkpoint written by Trainer.save_checkpoint")
    run.add_argument("--batch-size", type=int, default=256, help="images per forward pass "
                     "(default: %(default)s)")
    for action in cli.training_options("config", "device", "seed"):
        run._add_action(action)
    args = cli.parse_options(parser, argv)
    try:
        if args.device != "auto":
            _device.use(args.device)
        model, checkpoint = load_model(args.checkpoint)
        config = checkpoint.config
        args.dataset = args.dataset or config.get("dataset")
        if not args.dataset:
            parser.error(f"{args.checkpoint} does not say which dataset it was trained on: "
                         f"give --dataset")
        if cli.dataset_kind(args.dataset) not in cli.DATASET_DEFAULTS:
            parser.error(f"unknown dataset {args.dataset!r}: expected cifar10, digits, "
                         f"synthetic or folder:PATH")
        if args.image_size is None and config.get("resize"):
            args.image_size = config["resize"][0]
        args.crop = args.crop or bool(config.get("crop"))
        args.val_fraction = 0.0                      # the test split alone is evaluated
        args.augment = False
        ctx = distributed.init(_device.device())
    except (CheckpointError, FileNotFoundError, ValueError,
            _device.DeviceUnavailableError) as e:
        print(f"{PROG} evaluate: error: {e}", file=sys.stderr)
        return 2
    with ctx.abort_on_error():
        try:
            _, _, test, classes = cli.load_datasets(args, ctx)
        except cli._user_errors() as e:
            print(f"{PROG} evaluate: error: {e}", file=sys.stderr)
            return 2
        if checkpoint.classes is not None and list(checkpoint.classes) != list(classes):
            print(f"{PROG} evaluate: error: the checkpoint's classes ({len(checkpoint.classes)}: "
                  f"{', '.join(map(str, checkpoint.classes[:5]))}...) are not the dataset's "
                  f"({len(classes)}: {', '.join(map(str, classes[:5]))}...)", file=sys.stderr)
            return 2
        norm = checkpoint.normalization
        loader = data.Loader(test, args.batch_size, transform=data.Normalize(norm["mean"],
                                                                             norm["std"]),
                             rank=ctx.rank, world_size=ctx.size, pad=False)
        trainer = Trainer(model, None, distributed=ctx, progress=ctx.rank == 0)
        result = trainer.evaluate(loader, desc="test")
        if ctx.rank == 0:
            print(f"{args.checkpoint} on the {args.dataset} test set: loss {result['loss']:.4f}, "
                  f"accuracy {100 * result['accuracy']:.2f}% ({result['count']} images, epoch "
                  f"{checkpoint.epoch})")
    return 0


# ---------------------------------------------------------------------------- predict

def predict(argv):
    from . import predict as _predict
    return _predict.main(argv, prog=f"{PROG} predict")


# -------------------------------------------------------------------------- gradcheck

def gradcheck(argv):
    from . import gradcheck_suite
    return gradcheck_suite.main(argv, prog=f"{PROG} gradcheck")


# ------------------------------------------------------------------------------ bench

BENCH_DESCRIPTION = """\
Training-step throughput on this machine: the model, optimizer and batches the training options
describe (a synthetic task by default), a few steps to warm up, then --steps timed steps
(forward, loss, backward, the all-reduce under mpirun, the optimizer step; each waited for on
the device). Prints the median step time and images per second with the quartiles, and the
machine's load: on a machine shared with other work the figures are that work's too.

    cupycnn bench --model resnet18 --batch-size 32 --device numpy
    cupycnn bench --dataset digits --device sim --steps 10
    mpirun -n 2 cupycnn bench --device numpy                 # the data-parallel step"""


def bench(argv):
    import os
    import time

    import numpy as np

    from . import cli
    from . import devices as _device
    from . import random
    from .ops import metrics as metric_ops

    parser = cli.build_parser(BENCH_DESCRIPTION, default_dataset="synthetic",
                              prog=f"{PROG} bench")
    b = parser.add_argument_group("benchmark")
    b.add_argument("--steps", type=int, default=20, help="timed steps (default: %(default)s)")
    b.add_argument("--warmup", type=int, default=3,
                   help="untimed steps first: kernel builds, caches (default: %(default)s)")
    args = cli.parse_args(parser, argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    ctx = cli.start(args, prefix=f"{PROG} bench: ")
    if ctx is None:
        return 2
    with ctx.abort_on_error():
        try:
            random.manual_seed(args.seed)
            args.no_progress = True
            loaded = cli.load_data(args, ctx)
            trainer = cli.build_training(args, ctx, loaded)
        except cli._user_errors() as e:
            print(f"{PROG} bench: error: {e}", file=sys.stderr)
            return 2
        batches = []
        for x, y in loaded.train_loader:          # the training batches, transformed, reused
            batches.append((x, y))
            if len(batches) == min(4, len(loaded.train_loader)):
                break
        sums = metric_ops.new_sums()
        seconds = []
        for step in range(args.warmup + args.steps):
            x, y = batches[step % len(batches)]
            _device.synchronize()
            started = time.perf_counter()
            trainer.train_step(x, y, sums)
            _device.synchronize()
            if step >= args.warmup:
                seconds.append(time.perf_counter() - started)
        seconds = np.asarray(ctx.allgather(seconds)).max(axis=0)     # a step ends on every rank
        if ctx.rank == 0:
            images = len(batches[0][1]) * ctx.size
            low, median, high = np.percentile(seconds, [25, 50, 75])
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
                os.cpu_count()
            print(f"bench: {args.model}, batch {images} ({ctx.size} rank(s)), {args.optimizer}, "
                  f"device {_device.device()}: {args.steps} steps, median {1e3 * median:.1f} ms "
                  f"(quartiles {1e3 * low:.1f}-{1e3 * high:.1f} ms), {images / median:.1f} "
                  f"images/s (quartiles {images / high:.1f}-{images / low:.1f})")
            print(f"machine: load average {load:.2f} over the last minute on {cores} core(s)"
                  + (" (busy: other work shares the cores, and these figures)"
                     if load > 0.5 * cores else ""))
    return 0


# ------------------------------------------------------------------------------- data

def data_tools(argv):
    from .data import tools
    return tools.main(argv, prog=f"{PROG} data")


# ------------------------------------------------------------------------------- info

def info(argv):
    parser = argparse.ArgumentParser(
        prog=f"{PROG} info", description="What this machine offers cupycnn: the devices "
        "(numpy, sim, cuda) and why each unusable one is unusable, the versions of Python and "
        "the packages, the GPUs, NCCL and MPI, as found.")
    parser.parse_args(argv)
    from . import machine
    for line in machine.report():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
