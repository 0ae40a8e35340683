"""Grid search over learning rate and weight decay: train once per pair, pick the pair with the
best validation accuracy (never the test set), print the table and draw it as a heatmap.

    python examples/grid_search.py --lr 0.05 0.1 0.2 --weight-decay 1e-4 5e-4 -- \
        --dataset cifar10 --model resnet18 --epochs 15
    mpirun -n 4 python examples/grid_search.py ...        # each run data-parallel on 4 GPUs

Everything after `--` goes to examples/train_cifar.py for every run (each in its own log
folder, <log-dir>/lr<lr>-wd<wd>); the table goes to <log-dir>/grid.csv and grid.png.

The pairs are compared on a validation split held out of the training set, never on the test
set. Datasets whose recipe trains on every training image (digits) get --val-fraction 0.15 here
unless `--` passes one; --val-fraction 0 is refused (there would be nothing to pick by).
"""
import argparse
import csv
import itertools
import math
import json
import sys
from pathlib import Path

import numpy as np

from cupycnn import cli


def main():
    argv = sys.argv[1:]
    passed = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="grid_search.py", usage="%(prog)s --lr LR [LR ...] --weight-decay WD [WD ...] "
        "[--log-dir DIR] -- [training options]", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="training options: everything `python examples/train_cifar.py --help` lists")
    parser.add_argument("--lr", type=float, nargs="+", required=True, metavar="LR",
                        help="learning rates to try (the peak for one-cycle)")
    parser.add_argument("--weight-decay", type=float, nargs="+", required=True, metavar="WD",
                        help="L2 penalties to try, each with every learning rate")
    parser.add_argument("--log-dir", default="runs/grid", metavar="DIR",
                        help="where grid.csv, grid.png and one folder per run go "
                             "(default: %(default)s)")
    args = parser.parse_args(own)
    if any(a.startswith(("--lr", "--weight-decay", "--log-dir", "--checkpoint")) for a in passed):
        parser.error("--lr, --weight-decay and --log-dir belong before `--`: the grid sets them")
    passed = with_validation(parser, passed)

    from cupycnn import distributed
    results = []
    for lr, wd in itertools.product(args.lr, args.weight_decay):
        run_dir = Path(args.log_dir) / f"lr{lr:g}-wd{wd:g}"
        code = cli.main(__doc__.split("\n\n")[0], argv=passed + [
            "--lr", str(lr), "--weight-decay", str(wd), "--log-dir", str(run_dir)])
        if code:
            return code
        if distributed.context().rank == 0:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
            val = summary["best_val_accuracy"]          # null without a validation set
            results.append((lr, wd, math.nan if val is None else val, summary["test_accuracy"]))
    if distributed.context().rank != 0:
        return 0
    best = max(results, key=lambda r: (np.nan_to_num(r[2], nan=-1), -r[0]))
    out = Path(args.log_dir)
    with open(out / "grid.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lr", "weight_decay", "best_val_accuracy", "test_accuracy"])
        writer.writerows(results)
    print(f"\n{'lr':>10} {'weight decay':>13} {'best val acc':>13} {'test acc':>9}")
    for lr, wd, val, test in results:
        mark = "  <- best by validation" if (lr, wd) == best[:2] else ""
        print(f"{lr:>10g} {wd:>13g} {100 * val:>12.2f}% {100 * test:>8.2f}%{mark}")
    _heatmap(results, args.lr, args.weight_decay, out / "grid.png")
    print(f"wrote {out / 'grid.csv'} and {out / 'grid.png'}")
    return 0


def with_validation(parser, passed):
    """The training options with a validation split: the one they ask for, or 0.15 where the
    dataset's recipe holds none out; a parser error if they ask for none."""
    training = cli.parse_args(cli.build_parser("grid search run"), passed)
    if training.val_fraction and training.val_fraction > 0:
        return passed
    if any(a.startswith("--val-fraction") for a in passed):
        parser.error("--val-fraction 0 leaves no validation set, and the grid picks the best pair "
                     "by validation accuracy (never by the test set): pass a fraction such as "
                     "--val-fraction 0.15 after `--`")
    print(f"grid_search.py: {training.dataset} trains on every training image by default; "
          f"holding out --val-fraction 0.15 to compare the pairs on", flush=True)
    return passed + ["--val-fraction", "0.15"]


def _heatmap(results, lrs, wds, path):
    from cupycnn.train.plots import _pyplot
    plt = _pyplot()
    grid = np.full((len(lrs), len(wds)), np.nan)
    for lr, wd, val, _ in results:
        grid[lrs.index(lr), wds.index(wd)] = val
    fig, ax = plt.subplots(figsize=(1.6 * len(wds) + 2, 1.0 * len(lrs) + 2))
    image = ax.imshow(grid, cmap="viridis")
    ax.set_xticks(range(len(wds)))
    ax.set_xticklabels([f"{w:g}" for w in wds])
    ax.set_yticks(range(len(lrs)))
    ax.set_yticklabels([f"{v:g}" for v in lrs])
    ax.set_xlabel("weight decay")
    ax.set_ylabel("learning rate")
    for i in range(len(lrs)):
        for j in range(len(wds)):
            ax.text(j, i, f"{100 * grid[i, j]:.1f}%", ha="center", va="center", color="white")
    ax.set_title("best validation accuracy")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
