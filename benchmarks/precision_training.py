"""Training at fp32, tf32 and bf16, over seeds: does a lower precision reach fp32's accuracy?

    python benchmarks/precision_training.py --task digits --device sim --seeds 3 --epochs 3
    python benchmarks/precision_training.py --task resnet18 --device numpy --seeds 3
    python benchmarks/precision_training.py --task resnet18 --device sim --seeds 2 --size 192 \
        --batch-size 8 --lr 3e-3 --epochs 1

Each run is the training command itself (`examples/train_cifar.py ... --precision P --seed S`,
in a fresh process), and its test accuracy is read from the run's summary.json. Tasks:
    digits    the digits recipe (scikit-learn's real 8x8 digits, simple_cnn), `--epochs` of it
    resnet18  ResNet-18 with the CIFAR stem, `--width` channels in its first stage (64 is
              torchvision's; a narrower one keeps the run short on a CPU), on the synthetic
              CIFAR-shaped task (32x32x3, 10 classes, `--size` training images and a fifth as
              many test images; `--similarity` and `--noise` make it harder: data/synthetic.py),
              the synthetic recipe (Adam, cosine; `--lr`, default 1e-3) with `--batch-size`
              (default 64), no augmentation, no validation split
Per precision it prints the mean, standard deviation, minimum and maximum test accuracy over the
seeds (the seeds are the same for every precision: seed s draws the same initial weights, batches
and dropout at every precision), and whether the mean is within seed noise of fp32's: |mean -
mean_fp32| <= 2 sqrt(s^2 / n + s_fp32^2 / n) (two standard errors of the difference), and the
largest per-seed difference from fp32. The table is printed again after every seed (all
precisions of it done), and `--json` rewritten after every run, so a run stopped early keeps
what it measured.

On sim the convolutions and dense layers run the tensor-core kernels (conv2d_tc.cu, gemm_tc.cu)
through the emulator's mma.sync; on numpy the reference with the same operand rounding (the two
agree to FP32 accumulation error: tests/test_precision.py).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "tf32", "bf16")


def command(args, precision, seed, epochs, log_dir):
    common = ["--device", args.device, "--precision", precision, "--seed", str(seed),
              "--log-dir", log_dir, "--no-progress", "--epochs", str(epochs)]
    if args.task == "digits":
        return [sys.executable, str(ROOT / "examples" / "train_cifar.py"), "--dataset",
                "digits"] + common
    # The training command itself, with the synthetic recipe's resnet18 given `width`.
    return [sys.executable, __file__, "--_train-resnet18", str(args.width), "--dataset",
            "synthetic", "--model", "resnet18", "--synthetic-size", str(args.size),
            "--synthetic-noise", str(args.noise), "--synthetic-similarity", str(args.similarity),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--val-fraction", "0",
            "--no-augment"] + common


def run(args, precision, seed, epochs):
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = os.path.join(tmp, "run")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("CUPYCNN_PRECISION", None)
        started = time.perf_counter()
        out = subprocess.run(command(args, precision, seed, epochs, log_dir),
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"{args.task} {precision} seed {seed} failed:\n"
                               f"{out.stderr[-3000:]}")
        summary = json.loads(Path(log_dir, "summary.json").read_text(encoding="utf-8"))
        assert summary["precision"] == precision
        return summary["test_accuracy"], time.perf_counter() - started


def mean_std(values):
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["digits", "resnet18"], default="digits")
    parser.add_argument("--device", choices=["sim", "numpy", "cuda"], default="sim")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="start at this seed (seeds F .. F+N-1: a run split over processes)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="default: 3 (digits), 2 (resnet18)")
    parser.add_argument("--size", type=int, default=1024, help="resnet18: training images")
    parser.add_argument("--width", type=int, default=16, help="resnet18: first-stage channels")
    parser.add_argument("--batch-size", type=int, default=64, help="resnet18: batch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="resnet18: Adam's learning rate")
    parser.add_argument("--noise", type=float, default=0.2,
                        help="resnet18: the synthetic task's pixel noise (fraction of 255)")
    parser.add_argument("--similarity", type=float, default=0.0,
                        help="resnet18: the share of each class pattern common to all classes")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--json", metavar="PATH",
                        help="also write the accuracies as JSON (after every run)")
    args = parser.parse_args(argv)
    epochs = args.epochs or (3 if args.task == "digits" else 2)
    precisions = args.precisions.split(",")
    what = (f"width {args.width}, {args.size} images (noise {args.noise}, similarity "
            f"{args.similarity}), batch {args.batch_size}, lr {args.lr}, "
            if args.task == "resnet18" else "")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(f"{args.task} on {args.device}, {what}{epochs} epoch(s), seeds {seeds[0]}..{seeds[-1]}",
          flush=True)
    accuracy = {p: [] for p in precisions}
    seconds = {p: [] for p in precisions}
    for seed in seeds:
        for p in precisions:
            acc, took = run(args, p, seed, epochs)
            accuracy[p].append(acc)
            seconds[p].append(round(took, 1))
            print(f"  seed {seed} {p}: test accuracy {100 * acc:.2f}% ({took:.0f} s)",
                  flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(
                    {"task": args.task, "device": args.device, "epochs": epochs,
                     "options": {k: v for k, v in vars(args).items() if k != "json"},
                     "accuracy": accuracy, "seconds": seconds}, indent=1), encoding="utf-8")
        print(summary(accuracy, precisions, args.first_seed), flush=True)
    return 0


def summary(accuracy, precisions, first_seed=0):
    """The table over the seeds done so far (those every precision has)."""
    done = min(len(accuracy[p]) for p in precisions)
    accuracy = {p: accuracy[p][:done] for p in precisions}
    lines = [f"over seeds {first_seed}..{first_seed + done - 1}:",
             f"{'precision':<10} {'mean %':>8} {'std':>6} {'min':>7} {'max':>7} "
             f"{'max |diff| vs fp32':>19}  within seed noise of fp32"]
    ref = accuracy.get("fp32")
    ref_m, ref_s = mean_std(ref) if ref else (None, None)
    for p in precisions:
        m, s = mean_std(accuracy[p])
        line = (f"{p:<10} {100 * m:>8.2f} {100 * s:>6.2f} {100 * min(accuracy[p]):>7.2f} "
                f"{100 * max(accuracy[p]):>7.2f}")
        if ref and p != "fp32":
            diff = max(abs(a - b) for a, b in zip(accuracy[p], ref))
            bound = 2 * math.sqrt((s ** 2 + ref_s ** 2) / len(ref))
            verdict = "yes" if abs(m - ref_m) <= bound else "NO"
            line += (f" {100 * diff:>19.2f}  {verdict} (|{100 * (m - ref_m):+.2f}| vs 2 s.e. "
                     f"{100 * bound:.2f})")
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--_train-resnet18":     # one run, for `command`
        sys.path.insert(0, str(ROOT))
        from cupycnn import cli
        cli.DATASET_DEFAULTS["synthetic"]["model_kwargs"] = {"resnet18": {"width": int(sys.argv[2])}}
        raise SystemExit(cli.main("synthetic task", "synthetic", sys.argv[3:]))
    raise SystemExit(main())
