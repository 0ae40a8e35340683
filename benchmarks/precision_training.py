"""Training at fp32, tf32 and bf16, over seeds: does a lower precision reach fp32's accuracy?

    python benchmarks/precision_training.py --task digits --device sim --seeds 3 --epochs 3
    python benchmarks/precision_training.py --task resnet18 --device numpy --seeds 3

Each run is the training command itself (`examples/train_cifar.py ... --precision P --seed S`,
in a fresh process), and its test accuracy is read from the run's summary.json. Tasks:
    digits    the digits recipe (scikit-learn's real 8x8 digits, simple_cnn), `--epochs` of it
    resnet18  ResNet-18 with the CIFAR stem, `--width` channels in its first stage (64 is
              torchvision's; a narrower one keeps the run short on a CPU), on the synthetic
              CIFAR-shaped task (32x32x3, 10 classes, `--size` training images), the synthetic
              recipe (Adam 1e-3, cosine) with batch 64, no augmentation
Per precision it prints the mean, standard deviation, minimum and maximum test accuracy over the
seeds (the seeds are the same for every precision: seed s draws the same initial weights, batches
and dropout at every precision), and whether the mean is within seed noise of fp32's: |mean -
mean_fp32| <= 2 sqrt(s^2 / n + s_fp32^2 / n) (two standard errors of the difference), and the
largest per-seed difference from fp32.

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


def command(task, device, precision, seed, epochs, size, width, log_dir):
    common = ["--device", device, "--precision", precision, "--seed", str(seed), "--log-dir",
              log_dir, "--no-progress", "--epochs", str(epochs)]
    if task == "digits":
        return [sys.executable, str(ROOT / "examples" / "train_cifar.py"), "--dataset",
                "digits"] + common
    # The training command itself, with the synthetic recipe's resnet18 given `width`.
    return [sys.executable, __file__, "--_train-resnet18", str(width), "--dataset", "synthetic",
            "--model", "resnet18", "--synthetic-size", str(size), "--batch-size", "64",
            "--no-augment"] + common


def run(task, device, precision, seed, epochs, size, width=16):
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = os.path.join(tmp, "run")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("CUPYCNN_PRECISION", None)
        started = time.perf_counter()
        out = subprocess.run(command(task, device, precision, seed, epochs, size, width, log_dir),
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"{task} {precision} seed {seed} failed:\n{out.stderr[-3000:]}")
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
    parser.add_argument("--epochs", type=int, default=None,
                        help="default: 3 (digits), 2 (resnet18)")
    parser.add_argument("--size", type=int, default=1024, help="resnet18: training images")
    parser.add_argument("--width", type=int, default=16, help="resnet18: first-stage channels")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--json", metavar="PATH", help="also write the accuracies as JSON")
    args = parser.parse_args(argv)
    epochs = args.epochs or (3 if args.task == "digits" else 2)
    precisions = args.precisions.split(",")
    what = f"width {args.width}, {args.size} images, " if args.task == "resnet18" else ""
    print(f"{args.task} on {args.device}, {what}{epochs} epoch(s), seeds 0..{args.seeds - 1}",
          flush=True)
    accuracy = {p: [] for p in precisions}
    for seed in range(args.seeds):
        for p in precisions:
            acc, seconds = run(args.task, args.device, p, seed, epochs, args.size, args.width)
            accuracy[p].append(acc)
            print(f"  seed {seed} {p}: test accuracy {100 * acc:.2f}% ({seconds:.0f} s)",
                  flush=True)
    print(f"{'precision':<10} {'mean %':>8} {'std':>6} {'min':>7} {'max':>7} "
          f"{'max |diff| vs fp32':>19}  within seed noise of fp32")
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
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"task": args.task, "device": args.device,
                                               "epochs": epochs, "accuracy": accuracy}, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--_train-resnet18":     # one run, for `command`
        sys.path.insert(0, str(ROOT))
        from cupycnn import cli
        cli.DATASET_DEFAULTS["synthetic"]["model_kwargs"] = {"resnet18": {"width": int(sys.argv[2])}}
        raise SystemExit(cli.main("synthetic task", "synthetic", sys.argv[3:]))
    raise SystemExit(main())
