"""Real data, measured: a small CNN on scikit-learn's digits, trained by cupycnn and by PyTorch.

    python benchmarks/digits.py                       # cupycnn on numpy, then PyTorch (CPU)
    python benchmarks/digits.py --seeds 5             # five seeds: mean and min accuracy
    python benchmarks/digits.py --device sim --epochs 1 --no-torch   # the kernels, emulated
    python benchmarks/digits.py --device cuda         # the kernels on a GPU (PyTorch: CPU)

The data: `cupycnn.data.Digits`, the 1,797 real 8x8 images of `sklearn.datasets.load_digits`
in the fixed stratified 80/20 split of seed 0 (1,438 training, 359 test images), normalised by
the training split's mean and standard deviation.

The goal (numpy device, the 2-core CI machine): at least 98% test accuracy with under 2 minutes
of training (the wall time of Trainer.fit, measured here; evaluation is not counted).

The comparison. PyTorch (CPU) trains the same network: the same layers in the same order under
the same names (the script checks that both state_dicts have the same keys and shapes), each
initialised by PyTorch's default (cupycnn's layers draw from the same distributions: the script
prints the bounds and the spread of both), the same optimizer, hyperparameters and one-cycle
schedule (torch.optim), the same batch size and epochs, and the very same batches in the same
order (both iterate one cupycnn Loader: its per-epoch permutation and normalisation on the host,
counted in both times). What differs: the initial weights and the dropout masks are drawn by
each framework's own generator. Both use the same number of threads (`--threads`, default: the
cores this process may use): torch.set_num_threads, and OMP_NUM_THREADS / OPENBLAS_NUM_THREADS /
MKL_NUM_THREADS set before NumPy is imported (the script reports what threadpoolctl sees).

PyTorch is imported only here (it is in the dev extra), never by the library.
"""
import argparse
import os
import sys
import time
from pathlib import Path

# ----------------------------------------------------------------------------------- recipe
# The recipe, explicit: what `examples/train_cifar.py --dataset digits` should default to.
MODEL = "simple_cnn"                  # cupycnn.models.REGISTRY name
MODEL_KWARGS = dict(num_classes=10, in_channels=1, input_size=8,
                    widths=(32, 64),          # two blocks: 8x8 -> 4x4 -> 2x2
                    convs_per_block=2,        # (Conv 3x3 pad 1 - BatchNorm - ReLU) x 2, pool 2
                    block_dropout=(0.1, 0.2),
                    hidden=128,               # Flatten - Dense(256, 128) - BN1d - ReLU
                    head_dropout=0.3)         #   - Dropout - Dense(128, 10)
BATCH_SIZE = 32                       # 45 steps per epoch (the last batch has 30 images)
EPOCHS = 15
OPTIMIZER = "Adam"                    # betas (0.9, 0.999), eps 1e-8, no weight decay
MAX_LR = 3e-3                         # one-cycle peak learning rate
ONE_CYCLE = dict(pct_start=0.3, anneal_strategy="cos", div_factor=25.0, final_div_factor=1e4,
                 cycle_momentum=True, base_momentum=0.85, max_momentum=0.95)  # PyTorch's
                                      # defaults: lr 1.2e-4 -> 3e-3 -> 1.2e-8, beta1 0.95->0.85
                                      # ->0.95, stepped after every batch
LABEL_SMOOTHING = 0.0
AUGMENTATION = None                   # none: it did not raise the accuracy (docs/BENCHMARKS.md)
SPLIT_SEED = 0                        # Digits' stratified 80/20 split
GOAL_ACCURACY, GOAL_SECONDS = 0.98, 120.0

RECIPE_TEXT = (f"{MODEL}({', '.join(f'{k}={v}' for k, v in MODEL_KWARGS.items())}); "
               f"{OPTIMIZER}, OneCycleLR(max_lr={MAX_LR}, pct_start={ONE_CYCLE['pct_start']}, "
               f"cos, beta1 {ONE_CYCLE['max_momentum']}->{ONE_CYCLE['base_momentum']}) per "
               f"batch; batch {BATCH_SIZE}; {EPOCHS} epochs; label smoothing "
               f"{LABEL_SMOOTHING}; augmentation {AUGMENTATION}; split seed {SPLIT_SEED}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="numpy", choices=["numpy", "sim", "cuda"],
                   help="the cupycnn device (PyTorch always trains on the CPU)")
    p.add_argument("--seeds", type=int, default=1,
                   help="repeat with seeds 0 .. N-1; report mean and min accuracy")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads for NumPy's BLAS and for PyTorch")
    p.add_argument("--epochs", type=int, default=EPOCHS,
                   help="override the recipe's epochs (the goal is judged only at the recipe's)")
    p.add_argument("--no-torch", action="store_true", help="train with cupycnn only")
    p.add_argument("--check", action="store_true",
                   help="exit with status 1 unless the numpy runs meet the goal")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    # Before NumPy (and its BLAS) is loaded: the thread pools read these when they start.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source tree

import cupycnn  # noqa: E402
from cupycnn import models, optim  # noqa: E402
from cupycnn.data import Digits, Loader, Normalize, channel_stats  # noqa: E402
from cupycnn.losses import SoftmaxCrossEntropy  # noqa: E402
from cupycnn.train import Trainer  # noqa: E402


# -------------------------------------------------------------------------------- the data

def load_data():
    """(train, test, mean, std): the fixed split, and the training split's statistics."""
    train, test = Digits(train=True, seed=SPLIT_SEED), Digits(train=False, seed=SPLIT_SEED)
    mean, std = channel_stats(train)
    return train, test, mean, std


def loaders(train, test, mean, std, seed):
    """The training loader (shuffled by `seed`, a new permutation every epoch) and the test
    loader, both normalising on the current device."""
    normalize = Normalize(mean, std)
    return (Loader(train, BATCH_SIZE, shuffle=True, seed=seed, transform=normalize),
            Loader(test, 512, shuffle=False, transform=normalize))


# ------------------------------------------------------------------------------ cupycnn side

def train_cupycnn(device, seed, epochs, data, verbose):
    """Train the recipe with cupycnn's Trainer on `device`; returns (accuracy, seconds, model)."""
    cupycnn.use(device)
    cupycnn.manual_seed(seed)
    train, test, mean, std = data
    train_loader, test_loader = loaders(train, test, mean, std, seed)
    model = models.build(MODEL, **MODEL_KWARGS)
    optimizer = optim.Adam(model.parameters(), lr=MAX_LR)
    schedule = optim.OneCycleLR(optimizer, max_lr=MAX_LR, epochs=epochs,
                                steps_per_epoch=len(train_loader), **ONE_CYCLE)
    trainer = Trainer(model, optimizer, SoftmaxCrossEntropy(label_smoothing=LABEL_SMOOTHING),
                      scheduler=schedule, scheduler_interval="step", progress=False)
    out = sys.stdout if verbose else open(os.devnull, "w")
    started = time.perf_counter()
    _redirected(out, trainer.fit, train_loader, epochs)
    cupycnn.synchronize()
    seconds = time.perf_counter() - started
    accuracy = trainer.evaluate(test_loader)["accuracy"]
    return accuracy, seconds, model


def _redirected(out, fn, *args):
    saved, sys.stdout = sys.stdout, out
    try:
        return fn(*args)
    finally:
        sys.stdout = saved


# ------------------------------------------------------------------------------ PyTorch side

def torch_simple_cnn(torch, num_classes, in_channels, input_size, widths, convs_per_block,
                     block_dropout, hidden, head_dropout):
    """cupycnn.models.simple_cnn written with torch.nn: the same layers, order and names."""
    nn = torch.nn
    children, channels, size = [], in_channels, input_size
    for b, (width, p) in enumerate(zip(widths, block_dropout), start=1):
        for c in range(1, convs_per_block + 1):
            children += [(f"block{b}_conv{c}", nn.Conv2d(channels, width, 3, padding=1)),
                         (f"block{b}_bn{c}", nn.BatchNorm2d(width)),
                         (f"block{b}_relu{c}", nn.ReLU())]
            channels = width
        children += [(f"block{b}_pool", nn.MaxPool2d(2)), (f"block{b}_dropout", nn.Dropout(p))]
        size //= 2
    children += [("flatten", nn.Flatten()),
                 ("fc1", nn.Linear(channels * size * size, hidden)),
                 ("fc1_bn", nn.BatchNorm1d(hidden)), ("fc1_relu", nn.ReLU()),
                 ("fc1_dropout", nn.Dropout(head_dropout)),
                 ("fc2", nn.Linear(hidden, num_classes))]
    import collections
    return nn.Sequential(collections.OrderedDict(children))


def train_torch(torch, seed, epochs, data, verbose):
    """The same recipe in PyTorch on the CPU, fed the same batches; (accuracy, seconds, model)."""
    cupycnn.use("numpy")               # the shared loader hands out NumPy batches
    torch.manual_seed(seed)
    train, test, mean, std = data
    train_loader, test_loader = loaders(train, test, mean, std, seed)
    model = torch_simple_cnn(torch, **MODEL_KWARGS)
    optimizer = torch.optim.Adam(model.parameters(), lr=MAX_LR)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=MAX_LR, epochs=epochs, steps_per_epoch=len(train_loader), **ONE_CYCLE)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    started = time.perf_counter()
    for epoch in range(epochs):
        train_loader.set_epoch(epoch)           # as Trainer.fit does
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        hits, count, epoch_start = 0, 0, time.perf_counter()
        for x, y in train_loader:
            x, y = torch.from_numpy(x), torch.from_numpy(y).long()
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():               # the running figures Trainer keeps too
                loss_sum += loss.detach() * len(y)
                hits += int((logits.argmax(1) == y).sum())
                count += len(y)
        if verbose:
            seconds = time.perf_counter() - epoch_start
            print(f"epoch {epoch + 1}/{epochs}: loss={float(loss_sum) / count:.4g}  "
                  f"accuracy={hits / count:.4g}  images_per_second={count / seconds:.4g}",
                  flush=True)
    seconds = time.perf_counter() - started
    model.eval()
    hits = 0
    with torch.no_grad():
        for x, y in test_loader:
            hits += int((model(torch.from_numpy(x)).argmax(1) == torch.from_numpy(y)).sum())
    return hits / len(test), seconds, model


# ------------------------------------------------------------------- the same model, shown

def show_same_model(torch, seed):
    """Check that both frameworks build the same state_dict (names, shapes) and print how each
    initialises every parameter: PyTorch's default for Conv2d and Linear weights and biases is
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)), std bound/sqrt(3);
    batchnorm weight 1, bias 0. Returns the table's lines."""
    cupycnn.use("numpy")
    cupycnn.manual_seed(seed)
    torch.manual_seed(seed)
    ours = models.build(MODEL, **MODEL_KWARGS).state_dict()
    theirs = {k: v.numpy() for k, v in torch_simple_cnn(torch, **MODEL_KWARGS)
              .state_dict().items()}
    if [(k, tuple(v.shape)) for k, v in ours.items()] != \
            [(k, tuple(v.shape)) for k, v in theirs.items()]:
        raise SystemExit("the two models differ:\n"
                         f"cupycnn: {[(k, v.shape) for k, v in ours.items()]}\n"
                         f"torch:   {[(k, v.shape) for k, v in theirs.items()]}")
    lines = [f"Both state_dicts: the same {len(ours)} entries (names, shapes); "
             f"{sum(v.size for k, v in ours.items() if 'running' not in k and 'num_' not in k)}"
             f" trainable values. Initialisation (seed {seed}, each framework's own draw):",
             "| parameter | shape | PyTorch default | bound | max abs cupycnn / torch | "
             "std cupycnn / torch (expected) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, a in ours.items():
        if not name.endswith(("weight", "bias")):
            continue
        b = theirs[name]
        layer = name.rsplit(".", 1)[0]
        if "bn" in layer:
            rule = "ones" if name.endswith("weight") else "zeros"
            lines.append(f"| {name} | {list(a.shape)} | {rule} | - | {abs(a).max():.3g} / "
                         f"{abs(b).max():.3g} | {a.std():.3g} / {b.std():.3g} (0) |")
            continue
        weight = ours[layer + ".weight"]
        fan_in = int(np.prod(weight.shape[1:]))
        bound = 1.0 / np.sqrt(fan_in)
        lines.append(f"| {name} | {list(a.shape)} | U(-1/sqrt({fan_in}), +) | {bound:.4f} | "
                     f"{abs(a).max():.4f} / {abs(b).max():.4f} | {a.std():.4f} / {b.std():.4f} "
                     f"({bound / np.sqrt(3):.4f}) |")
    return lines


# ----------------------------------------------------------------------------------- report

def thread_report(torch):
    """One line: the BLAS and OpenMP pools NumPy and PyTorch run with."""
    parts = []
    try:
        import threadpoolctl
        seen = set()
        for pool in threadpoolctl.threadpool_info():
            key = (pool["internal_api"], pool["num_threads"], Path(pool["filepath"]).name)
            if key not in seen:
                seen.add(key)
                parts.append(f"{pool['internal_api']} {pool.get('version') or ''} "
                             f"({Path(pool['filepath']).name}): {pool['num_threads']} threads"
                             .replace("  ", " "))
    except ImportError:
        parts.append("threadpoolctl not installed; OMP/OPENBLAS/MKL_NUM_THREADS="
                     f"{os.environ.get('OMP_NUM_THREADS')}")
    if torch is not None:
        parts.append(f"torch.get_num_threads() = {torch.get_num_threads()}")
    return "; ".join(parts)


def summarise(runs):
    """{framework: rows} -> the table lines."""
    lines = ["| framework | device | seeds | test accuracy mean | min | training s mean | "
             "images/s | time / PyTorch's |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    torch_seconds = np.mean([r["seconds"] for r in runs.get("PyTorch", [])] or [np.nan])
    for name, rows in runs.items():
        acc = [r["accuracy"] for r in rows]
        secs = [r["seconds"] for r in rows]
        ips = np.mean([r["images"] / r["seconds"] for r in rows])
        ratio = np.mean(secs) / torch_seconds
        lines.append(f"| {name} | {rows[0]['device']} | {len(rows)} | {100 * np.mean(acc):.2f}% "
                     f"| {100 * min(acc):.2f}% | {np.mean(secs):.1f} | {ips:.0f} | "
                     + (f"{ratio:.2f}x |" if np.isfinite(ratio) else "- |"))
    return lines


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def main(args):
    try:
        cupycnn.use(args.device)           # an unusable cuda device: one line, before any work
    except cupycnn.DeviceUnavailableError as e:
        print(f"digits.py: {e}", file=sys.stderr)
        return 2
    torch = None
    if not args.no_torch:
        import torch
        torch.set_num_threads(args.threads)
    data = load_data()
    train = data[0]
    print(f"digits: {len(train)} training, {len(data[1])} test images; mean {data[2][0]:.4f}, "
          f"std {data[3][0]:.4f}")
    print(f"recipe: {RECIPE_TEXT}" + (f" (epochs overridden: {args.epochs})"
                                       if args.epochs != EPOCHS else ""))
    print(f"threads: {thread_report(torch)}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} "
          f"usable; NumPy {np.__version__}" + (f", PyTorch {torch.__version__}" if torch else ""))
    if torch is not None:
        print("\n".join(show_same_model(torch, args.first_seed)))
    runs = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        accuracy, seconds, _ = train_cupycnn(args.device, seed, args.epochs, data,
                                             not args.quiet)
        runs.setdefault("cupycnn", []).append(dict(device=args.device, accuracy=accuracy,
                                                   seconds=seconds,
                                                   images=args.epochs * len(train)))
        print(f"seed {seed}: cupycnn ({args.device}) test accuracy {100 * accuracy:.2f}% in "
              f"{seconds:.1f} s", flush=True)
        if torch is not None:
            accuracy, seconds, _ = train_torch(torch, seed, args.epochs, data, not args.quiet)
            runs.setdefault("PyTorch", []).append(dict(device="cpu", accuracy=accuracy,
                                                       seconds=seconds,
                                                       images=args.epochs * len(train)))
            print(f"seed {seed}: PyTorch (cpu) test accuracy {100 * accuracy:.2f}% in "
                  f"{seconds:.1f} s", flush=True)
    print("\n".join(summarise(runs)))
    ours = runs["cupycnn"]
    if args.device == "numpy" and args.epochs == EPOCHS:
        worst = min(r["accuracy"] for r in ours)
        slowest = max(r["seconds"] for r in ours)
        met = worst >= GOAL_ACCURACY and slowest < GOAL_SECONDS
        print(f"goal (numpy, >= {100 * GOAL_ACCURACY:.0f}% test accuracy in < "
              f"{GOAL_SECONDS:.0f} s of training, every seed): {'met' if met else 'NOT met'} "
              f"(worst accuracy {100 * worst:.2f}%, slowest {slowest:.1f} s)")
        if args.check and not met:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(ARGS))
