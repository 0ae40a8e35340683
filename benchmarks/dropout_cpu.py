"""Dropout's forward on the numpy device (cupycnn/cpu/dropout.py) against another checkout's,
at the digits network's three dropout shapes (batch 32), interleaved in one process.

    python benchmarks/dropout_cpu.py --before /tmp/drop-before      # a checkout of main, say
    python benchmarks/dropout_cpu.py --before DIR --threads 1 2 --rounds 15

"before" is DIR's cupycnn/cpu/philox.py and cupycnn/cpu/dropout.py loaded beside this tree's
(its dropout drawing from its own philox; the rest of the package is this tree's), "after" is
this tree's. With PyTorch importable, torch.nn.functional.dropout on the same array (its CPU
kernel draws with bernoulli_) is timed too, as the named baseline. A sample is `--calls`
back-to-back forwards (a fresh stream each, the mask kept for the backward as in training);
each round times every (threads, version, shape) once, thread counts and versions in
alternating order; the figures are medians over the rounds, in microseconds per call
(wall, and the process's CPU time) and nanoseconds per element.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np                                                # noqa: E402

from cupycnn import cpu                                           # noqa: E402
from cupycnn.cpu import dropout as after_dropout                  # noqa: E402
from timing import wall_seconds                                   # noqa: E402

# The digits recipe's simple_cnn (docs/BENCHMARKS.md): its three Dropout layers' inputs, p.
SHAPES = [((32, 32, 4, 4), 0.1), ((32, 64, 2, 2), 0.2), ((32, 128), 0.3)]
SEED = 2**63 + 12345


def load_before(root):
    """root's cpu/philox.py and cpu/dropout.py as modules of this cupycnn.cpu (their relative
    imports resolve here), its dropout drawing from its philox."""
    modules = {}
    for name in ("philox", "dropout"):
        path = Path(root) / "cupycnn" / "cpu" / f"{name}.py"
        if not path.is_file():
            sys.exit(f"dropout_cpu: --before {root} has no {path.relative_to(root)}")
        spec = importlib.util.spec_from_file_location(f"cupycnn.cpu._before_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules[name] = module
    modules["dropout"].philox = modules["philox"]
    return modules["dropout"]


def forward_of(module):
    def run(x, p, calls):
        state = {"stream": 0}

        def one():
            state["stream"] += 1
            module.dropout_forward(x, p, SEED, state["stream"], {})
        return wall_seconds(one, calls)
    return run


def torch_forward():
    try:
        import torch
    except ImportError:
        return None, None

    def run(x, p, calls):
        t = torch.from_numpy(x)
        return wall_seconds(lambda: torch.nn.functional.dropout(t, p, training=True), calls)
    return run, torch


def set_threads(n, torch):
    cpu.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def load_average():
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a checkout whose cupycnn/cpu is 'before'")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()

    modules = {"before": load_before(args.before), "after": after_dropout}
    versions = {name: forward_of(module) for name, module in modules.items()}
    torch_run, torch = torch_forward()
    if torch_run is not None:
        versions["torch"] = torch_run
    rng = np.random.default_rng(0)
    inputs = {shape: rng.standard_normal(shape).astype(np.float32) for shape, _ in SHAPES}
    # Each version's mask keeps about 1 - p (a draw that lost its randomness would show here).
    for shape, p in SHAPES:
        for name, module in modules.items():
            kept = (module.dropout_forward(inputs[shape], p, SEED, 1) != 0).mean()
            if abs(kept - (1 - p)) > 0.05:
                sys.exit(f"dropout_cpu: {name} keeps {kept:.3f} of {shape} at p = {p}")

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before_run = load_average()
    names = list(versions)
    for threads in args.threads:                                    # warm: scratch, pages
        set_threads(threads, torch)
        for shape, p in SHAPES:
            for name in names:
                versions[name](inputs[shape], p, 3)
    wall, cpu_time = {}, {}
    for r in range(args.rounds):                # every (threads, version, shape) each round
        for threads in (args.threads if r % 2 == 0 else args.threads[::-1]):
            set_threads(threads, torch)
            for name in (names if r % 2 == 0 else names[::-1]):
                for shape, p in SHAPES:
                    key = (threads, shape, name)
                    start = time.process_time()
                    wall.setdefault(key, []).append(versions[name](inputs[shape], p, args.calls))
                    cpu_time.setdefault(key, []).append(
                        (time.process_time() - start) / args.calls)
    cpu.set_num_threads(None)

    print(f"dropout_forward on the numpy device, {started}; load average {load_before_run} "
          f"before, {load_average()} after; median of {args.rounds} rounds of {args.calls} "
          f"calls; before = {args.before}")
    head = ("| threads | shape | p | before us | after us | before / after | after ns/elem "
            "| CPU us before / after (ratio) |")
    rule = "| --- | --- | --- | --- | --- | --- | --- | --- |"
    if torch is not None:
        head += f" torch {torch.__version__} us | after / torch |"
        rule += " --- | --- |"
    print(head)
    print(rule)
    for threads in args.threads:
        for shape, p in SHAPES:
            med = {name: statistics.median(wall[(threads, shape, name)]) for name in versions}
            cpu_med = {name: statistics.median(cpu_time[(threads, shape, name)])
                       for name in ("before", "after")}
            row = (f"| {threads} | {shape} | {p} | {med['before'] * 1e6:.0f} | "
                   f"{med['after'] * 1e6:.0f} | {med['before'] / med['after']:.2f}x | "
                   f"{med['after'] * 1e9 / np.prod(shape):.1f} | "
                   f"{cpu_med['before'] * 1e6:.0f} / {cpu_med['after'] * 1e6:.0f} "
                   f"({cpu_med['before'] / cpu_med['after']:.2f}x) |")
            if torch is not None:
                row += f" {med['torch'] * 1e6:.0f} | {med['after'] / med['torch']:.2f}x |"
            print(row)


if __name__ == "__main__":
    main()
