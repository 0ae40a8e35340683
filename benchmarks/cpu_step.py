"""The numpy device's training step against PyTorch's on the CPU, interleaved in one process.

    python benchmarks/cpu_step.py                        # ResNet-18 and digits, 1 and 2 threads
    python benchmarks/cpu_step.py --models resnet18 --threads 1 2 --rounds 15
    python benchmarks/cpu_step.py --reference            # also the references: the path before
    python benchmarks/cpu_step.py --profile              # where the time goes, op by op, in both

The networks, batch 32 on random inputs (a pool of 4 batches, never zeros):
  resnet18  ResNet-18 with the 3x3 CIFAR stem on 32x32 images; SGD, momentum 0.9, weight decay
            5e-4 (benchmarks/resnet18_step.py builds the same network in torch.nn);
  digits    the digits recipe's simple_cnn on 8x8 images (benchmarks/digits.py); Adam.
A step is forward, softmax cross-entropy, backward and the optimizer's update: cupycnn as its
Trainer runs it (the images' gradient skipped, as PyTorch skips it for an input that does not
require grad), PyTorch as a training loop does (zero_grad, forward, backward, step).

How it is timed: one process, every (network, framework, threads) measured once per round, the
order of frameworks alternating between rounds; a sample is one step (resnet18) or a block of
steps (digits); each figure is the median over all rounds. The thread count is switched in
process: cupycnn.cpu.set_num_threads and NumPy's BLAS (threadpoolctl) for cupycnn,
torch.set_num_threads for PyTorch. The machine's load average is printed before and after:
other processes slow both frameworks alike only roughly, so a loaded run is noisier, not fair.

CPU s/step is the process's CPU time (every thread's) per step: on a machine shared with other
jobs it moves far less than the wall time, and at one thread it is what the step would take on
an idle core. (At two threads it also counts the time OpenMP's and OpenBLAS's threads spend
spinning while they wait, which PyTorch's pool does more of.)

FLOPs count the products (2 per multiply-add) of the convolutions and dense layers: forward,
weight gradient, and input gradient for every layer but the first (whose input is the images).
Achieved GFLOP/s are set beside the machine's SGEMM ceiling at the same thread count, measured
in the same run (a 2048^3 NumPy matmul); the copy ceiling is a 256 MB np.copyto.
"""
import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))     # run from a source tree
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import cupycnn  # noqa: E402
from cupycnn import cpu, models, optim  # noqa: E402
from cupycnn.layers import Conv2D, Dense, without_input_grad  # noqa: E402
from cupycnn.losses import SoftmaxCrossEntropy  # noqa: E402

BATCH = 32
POOL = 4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet18", "digits"],
                   choices=["resnet18", "digits"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=11, help="samples per figure")
    p.add_argument("--digits-block", type=int, default=20, help="digits steps per sample")
    p.add_argument("--warmup", type=int, default=2, help="steps before timing, per setting")
    p.add_argument("--reference", action="store_true",
                   help="also time cupycnn with cupycnn.cpu.set_enabled(False): the references")
    p.add_argument("--profile", action="store_true", help="per-op profile of both instead")
    p.add_argument("--profile-steps", type=int, default=3)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------- the threads

class Threads:
    """Sets the thread count of cupycnn's CPU path, NumPy's BLAS and PyTorch together."""

    def __init__(self, torch):
        from threadpoolctl import ThreadpoolController
        self.torch = torch
        self.blas = ThreadpoolController().select(user_api="blas")

    def set(self, n):
        cpu.set_num_threads(n)
        self.blas.limit(limits=n)            # returns a context; the limit stays set until changed
        self.torch.set_num_threads(n)


def load_average():
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


# ------------------------------------------------------------------------------- the networks

def data_pool(shape, classes=10):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((BATCH,) + shape).astype(np.float32),
             rng.integers(0, classes, BATCH).astype(np.int32)) for _ in range(POOL)]


def cupycnn_network(name):
    """(model, optimizer) for one network."""
    cupycnn.manual_seed(0)
    if name == "resnet18":
        model = models.resnet18(num_classes=10, stem="cifar")
        optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    else:
        import digits
        model = models.build(digits.MODEL, **digits.MODEL_KWARGS)
        optimizer = optim.Adam(model.parameters(), lr=1e-3)
    return model, optimizer


def torch_network(torch, name):
    torch.manual_seed(0)
    if name == "resnet18":
        import resnet18_step
        model = resnet18_step.torch_resnet18(torch, num_classes=10)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    else:
        import digits
        model = digits.torch_simple_cnn(torch, **digits.MODEL_KWARGS)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, optimizer


def input_shape(name):
    return (3, 32, 32) if name == "resnet18" else (1, 8, 8)


def cupycnn_stepper(name, pool):
    model, optimizer = cupycnn_network(name)
    loss = SoftmaxCrossEntropy()
    batches = [(cupycnn.asarray(x), cupycnn.asarray(y)) for x, y in pool]
    counter = [0]

    def step():
        x, y = batches[counter[0] % len(batches)]
        counter[0] += 1
        loss.forward(model.forward(x, training=True), y)
        with without_input_grad(model):
            model.backward(loss.backward())
        optimizer.step()

    return step, model


def torch_stepper(torch, name, pool):
    model, optimizer = torch_network(torch, name)
    model.train()
    criterion = torch.nn.CrossEntropyLoss()
    batches = [(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))) for x, y in pool]
    counter = [0]

    def step():
        x, y = batches[counter[0] % len(batches)]
        counter[0] += 1
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()

    return step, model


def training_flops(model, shape):
    """FLOPs of a training step's products (see the module docstring), from one forward."""
    seen = []
    first = set(id(layer) for layer in model.input_layers())
    originals = {}
    for layer in model.layers():
        if isinstance(layer, (Conv2D, Dense)):
            originals[id(layer)] = layer.forward

            def recording(x, training=True, _layer=layer):
                y = originals[id(_layer)](x, training)
                seen.append((_layer, x.shape, y.shape))
                return y

            layer.forward = recording
    try:
        model.forward(cupycnn.asarray(np.ones((BATCH,) + shape, np.float32)), training=False)
    finally:
        for layer in model.layers():
            if id(layer) in originals:
                del layer.forward
    flops = 0
    for layer, x_shape, y_shape in seen:
        if isinstance(layer, Conv2D):
            kh, kw = layer.kernel_size
            macs = int(np.prod(y_shape)) * layer.in_channels * kh * kw
        else:
            macs = x_shape[0] * layer.in_features * layer.out_features
        flops += 2 * macs * (2 if id(layer) in first else 3)
    return flops


# ------------------------------------------------------------------------------- the ceilings

def sgemm_gflops(threads, size=2048, repeats=3):
    a = np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)
    c = np.empty_like(a)
    np.matmul(a, a, out=c)
    best = min(_timed(lambda: np.matmul(a, a, out=c)) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def copy_gbs(repeats=3):
    a = np.ones(64 * 2**20, np.float32)
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(repeats))
    return 2 * a.nbytes / best / 1e9


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------- measuring

def sample(step, count):
    """(wall seconds, CPU seconds) per step over `count` steps."""
    wall, cpu_time = time.perf_counter(), time.process_time()
    for _ in range(count):
        step()
    return ((time.perf_counter() - wall) / count, (time.process_time() - cpu_time) / count)


def measure(args, torch, threads):
    steppers, flops = {}, {}
    for name in args.models:
        pool = data_pool(input_shape(name))
        cupycnn.use("numpy")
        steppers[(name, "cupycnn")], model = cupycnn_stepper(name, pool)
        if args.reference:
            steppers[(name, "reference")], _ = cupycnn_stepper(name, pool)
        steppers[(name, "pytorch")], _ = torch_stepper(torch, name, pool)
        flops[name] = training_flops(model, input_shape(name))
    peaks = {}
    for t in args.threads:
        threads.set(t)
        peaks[t] = sgemm_gflops(t)
    copy = copy_gbs()
    times = collections.defaultdict(list)
    for t in args.threads:                      # warm-up: buffers, BLAS pools, caches
        threads.set(t)
        for (name, framework), step in steppers.items():
            for _ in range(args.warmup):
                with _path(framework):
                    step()
    for r in range(args.rounds):
        for t in args.threads:
            threads.set(t)
            for name in args.models:
                frameworks = [f for f in ("cupycnn", "reference", "pytorch")
                              if (name, f) in steppers]
                if r % 2:
                    frameworks.reverse()
                for framework in frameworks:
                    count = 1 if name == "resnet18" else args.digits_block
                    with _path(framework):
                        times[(name, framework, t)].append(
                            sample(steppers[(name, framework)], count))
        print(f"  round {r + 1}/{args.rounds} done, load {load_average()}", file=sys.stderr,
              flush=True)
    for t in args.threads:                      # the ceilings again, after
        threads.set(t)
        peaks[t] = max(peaks[t], sgemm_gflops(t))
    return times, flops, peaks, max(copy, copy_gbs())


class _path:
    """cupycnn's CPU path on (the default) or off (framework "reference")."""

    def __init__(self, framework):
        self.reference = framework == "reference"

    def __enter__(self):
        if self.reference:
            cpu.set_enabled(False)

    def __exit__(self, *exc):
        cpu.set_enabled(True)


def report(args, times, flops, peaks, copy):
    print(f"Machine: {cpu_name()}, {len(os.sched_getaffinity(0))} usable CPUs; NumPy "
          f"{np.__version__}; PyTorch {_torch_version()}")
    print("Ceilings: " + ", ".join(f"SGEMM {peaks[t]:.0f} GFLOP/s on {t} thread"
                                   f"{'s' if t > 1 else ''}" for t in args.threads)
          + f", copy {copy:.1f} GB/s (read + write)")
    print()
    print("| network | threads | cupycnn ms/step | PyTorch ms/step | cupycnn / PyTorch | "
          "cupycnn GFLOP/s (% of SGEMM) | PyTorch GFLOP/s (%) | CPU s/step cupycnn / PyTorch "
          "(ratio) |" + (" reference ms/step | faster than the reference |"
                         if args.reference else ""))
    print("| --- | --- | --- | --- | --- | --- | --- | --- |"
          + (" --- | --- |" if args.reference else ""))
    for name in args.models:
        for t in args.threads:
            ours = statistics.median(w for w, _ in times[(name, "cupycnn", t)])
            theirs = statistics.median(w for w, _ in times[(name, "pytorch", t)])
            ours_cpu = statistics.median(c for _, c in times[(name, "cupycnn", t)])
            theirs_cpu = statistics.median(c for _, c in times[(name, "pytorch", t)])
            g_ours, g_theirs = flops[name] / ours / 1e9, flops[name] / theirs / 1e9
            line = (f"| {name} | {t} | {1e3 * ours:.1f} | {1e3 * theirs:.1f} | "
                    f"**{ours / theirs:.2f}x** | {g_ours:.1f} ({100 * g_ours / peaks[t]:.0f}%) | "
                    f"{g_theirs:.1f} ({100 * g_theirs / peaks[t]:.0f}%) | "
                    f"{ours_cpu:.3f} / {theirs_cpu:.3f} ({ours_cpu / theirs_cpu:.2f}x) |")
            if args.reference:
                ref = statistics.median(w for w, _ in times[(name, "reference", t)])
                line += f" {1e3 * ref:.1f} | {ref / ours:.2f}x |"
            print(line)
    print()
    print(f"FLOPs per step: " + ", ".join(f"{name} {flops[name] / 1e9:.2f} GFLOP"
                                          for name in args.models))
    spread = {k: (min(w for w, _ in v), max(w for w, _ in v)) for k, v in times.items()}
    print("Spread (min-max ms over the rounds): " + "; ".join(
        f"{n} {f} {t}t {1e3 * lo:.1f}-{1e3 * hi:.1f}" for (n, f, t), (lo, hi) in spread.items()))


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown CPU"


def _torch_version():
    import torch
    return torch.__version__


# ------------------------------------------------------------------------------- profiles

def profile(args, torch, threads):
    """Per-op wall time of one network's step in both frameworks, at each thread count."""
    from cupycnn import ops
    for name in args.models:
        pool = data_pool(input_shape(name))
        cupycnn.use("numpy")
        ours, _ = cupycnn_stepper(name, pool)
        theirs, _ = torch_stepper(torch, name, pool)
        for t in args.threads:
            threads.set(t)
            for _ in range(args.warmup):
                ours()
                theirs()
            totals, cpu_totals = collections.Counter(), collections.Counter()
            wrapped = _wrap_ops(ops, totals, cpu_totals)
            try:
                wall, cpu_time = sample(ours, args.profile_steps)
            finally:
                for module, attr, original in wrapped:
                    setattr(module, attr, original)
            steps = args.profile_steps
            print(f"\n### {name}, {t} thread{'s' if t > 1 else ''}: cupycnn "
                  f"{1e3 * wall:.1f} ms/step, {1e3 * cpu_time:.1f} ms CPU time/step")
            print("| op | ms/step | share | CPU ms/step |\n| --- | --- | --- | --- |")
            for op, seconds in totals.most_common():
                print(f"| {op} | {1e3 * seconds / steps:.1f} | {100 * seconds / steps / wall:.0f}% "
                      f"| {1e3 * cpu_totals[op] / steps:.1f} |")
            rest = wall - sum(totals.values()) / steps
            rest_cpu = cpu_time - sum(cpu_totals.values()) / steps
            print(f"| (layers, checks, Python) | {1e3 * rest:.1f} | {100 * rest / wall:.0f}% | "
                  f"{1e3 * rest_cpu:.1f} |")
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for _ in range(args.profile_steps):
                    theirs()
            wall_t, cpu_t = sample(theirs, args.profile_steps)
            print(f"\n### {name}, {t} thread{'s' if t > 1 else ''}: PyTorch "
                  f"{1e3 * wall_t:.1f} ms/step, {1e3 * cpu_t:.1f} ms CPU time/step (unprofiled)")
            print("| op | ms/step (self) |\n| --- | --- |")
            events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
            for e in events[:14]:
                print(f"| {e.key} | {e.self_cpu_time_total / 1e3 / args.profile_steps:.1f} |")


def _wrap_ops(ops, totals, cpu_totals):
    """Time every public function of cupycnn.ops' modules (the outermost call only)."""
    import types
    wrapped, depth = [], [0]
    for module in vars(ops).values():
        if not isinstance(module, types.ModuleType) or not module.__name__.startswith(
                "cupycnn.ops."):
            continue
        for attr, fn in list(vars(module).items()):
            if attr.startswith("_") or not isinstance(fn, types.FunctionType) or \
                    fn.__module__ != module.__name__:
                continue

            def timed(*a, _fn=fn, _name=f"{module.__name__[12:]}.{attr}", **k):
                depth[0] += 1
                start, start_cpu = time.perf_counter(), time.process_time()
                try:
                    return _fn(*a, **k)
                finally:
                    depth[0] -= 1
                    if depth[0] == 0:
                        totals[_name] += time.perf_counter() - start
                        cpu_totals[_name] += time.process_time() - start_cpu
            wrapped.append((module, attr, fn))
            setattr(module, attr, timed)
    return wrapped


def main(argv=None):
    args = parse_args(argv)
    import torch
    threads = Threads(torch)
    print(f"load average before: {load_average()}", file=sys.stderr, flush=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = load_average()
    if args.profile:
        profile(args, torch, threads)
        return
    times, flops, peaks, copy = measure(args, torch, threads)
    print(f"`python benchmarks/cpu_step.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
          f", {started}, batch {BATCH}, {args.rounds} rounds; load average (1/5/15 min) "
          f"{load_before} before, {load_average()} after")
    report(args, times, flops, peaks, copy)


if __name__ == "__main__":
    main()
