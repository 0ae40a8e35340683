"""The emulator's speed: the build it had before (-O2, blocks on one OS thread) against its
defaults (-O3 -march=native, blocks on every usable core), kernel by kernel, interleaved in
one process; and what a barrier costs.

    python benchmarks/sim_speed.py                     # conv2d and gemm kernels, barriers
    python benchmarks/sim_speed.py --rounds 15 --batch 8

Builds: the same kernels/*.cu source as three sim.Modules, "-O2, 1 thread" (the emulator
before issue 14), "default flags, 1 thread" (sim.optimization_flags(): -O3 -march=native
-ffp-contract=fast, and the header's own changes) and "default, N threads" (blocks on N OS
threads, the default for training); --build adds more. The ops of cupycnn.ops launch them on the sim device exactly as in training, on a
ResNet-18 layer2 convolution (batch --batch, 128 channels, 16x16, 3x3) and a 512^3 SGEMM
(sgemm_nn, sgemm_nt, sgemm_tn: the dense layer's three products). Each round times every
(kernel, build) once, builds in alternating order; the figures are medians over the rounds.

A build is swapped in where every op finds its kernels, runtime.get_kernel
(runtime.kernel_builds: each (file, defines) its own module of the build's flags and threads),
and every timed call is checked to have launched only that build's libraries (counted launches
per library, their flags, OpenMP and thread count): a substitution that misses stops the run
instead of timing one build under three names (what the table in docs/BENCHMARKS.md before
15:30 UTC on 2026-12-01 did).

Barriers: a kernel whose threads do nothing but pass R barriers (a shared-memory write, a
__syncthreads, a read of a neighbour's value, a __syncthreads), timed at R and at 0; the
difference over 2 R barriers, blocks and threads is the cost of one thread passing one barrier
(two fiber switches, one out and one in). The same for a warp shuffle (__shfl_xor_sync).
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import cupycnn  # noqa: E402
from cupycnn import ops, runtime, sim  # noqa: E402

BARRIER_PROBE = r"""
extern "C" __global__ void barriers(float* out, int rounds) {
  __shared__ float s[1024];
  float v = (float)threadIdx.x;
  for (int r = 0; r < rounds; ++r) {
    s[threadIdx.x] = v;
    __syncthreads();
    v += s[(threadIdx.x + 1) % blockDim.x];
    __syncthreads();
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}
extern "C" __global__ void shuffles(float* out, int rounds) {
  float v = (float)threadIdx.x;
  for (int r = 0; r < rounds; ++r) v += __shfl_xor_sync(0xffffffffu, v, r & 31);
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--batch", type=int, default=4, help="images in the convolution")
    p.add_argument("--gemm", type=int, default=512, help="SGEMM size")
    p.add_argument("--threads", type=int, default=sim.get_threads(),
                   help="OS threads of the multi-core build")
    p.add_argument("--kernels", type=lambda s: s.split(","), default=None,
                   help="time only these workloads (comma-separated; default all)")
    p.add_argument("--no-barriers", action="store_true", help="skip the barrier costs")
    p.add_argument("--build", action="append", default=[], metavar="LABEL=FLAGS@THREADS",
                   help="one more build to compare, e.g. 'unrolled=-O3 -march=native "
                        "-funroll-loops@1' (repeatable)")
    return p.parse_args(argv)


BUILDS = {"-O2, 1 thread": (("-O2",), 1), "default flags, 1 thread": (None, 1)}


def builds(args):
    out = dict(BUILDS)
    if args.threads > 1:
        out[f"default, {args.threads} threads"] = (None, args.threads)
    for spec in args.build:
        label, eq, rest = spec.partition("=")
        flags, at, threads = rest.rpartition("@")
        if not (eq and at and label and threads.isdigit() and int(threads) >= 1):
            raise SystemExit(f"--build {spec!r}: expected LABEL=FLAGS@THREADS")
        out[label] = (tuple(flags.split()), int(threads))
    return {label: Build(label, opt, threads) for label, (opt, threads) in out.items()}


def _contains(flags, opt):
    """Is `opt` a run of consecutive entries of `flags`?"""
    n = len(opt)
    return any(tuple(flags[i:i + n]) == tuple(opt) for i in range(len(flags) - n + 1))


class BuildMissed(RuntimeError):
    """A timed call launched a library that is not of the build it was timed as."""


class Build:
    """One build of the kernels (g++ flags, OS threads): get_kernel's modules while it runs
    (runtime.kernel_builds: each (file, defines) its own sim.Module of these flags and
    threads), and a check that every launch of a timed call ran one of its own libraries."""

    def __init__(self, label, opt, threads):
        self.label, self.threads = label, threads
        self.opt = sim.optimization_flags() if opt is None else tuple(opt)
        self.modules = []         # the sim.Modules made for this build
        self.launches = 0         # launches counted on its libraries by run()

    def make(self, file, defines):
        module = runtime.Module.__new__(runtime.Module)
        module.device, module.name, module._kernels = "sim", f"{file}.cu", {}
        module._raw = sim.Module(runtime.kernel_source(file), name=f"{file}.cu", opt=self.opt,
                                 threads=self.threads, options=runtime.define_options(defines))
        self.modules.append(module._raw)
        return module

    def libraries(self):
        return [b for m in self.modules for b in m.builds()]

    def run(self, what, fn):
        """(wall, CPU) seconds fn() takes with this build's kernels. Raises BuildMissed unless it launched
        something and every launch ran a library of this build: its modules', with its flags,
        OpenMP exactly when it has several threads, and its thread count."""
        before = {id(b): b.launches for b in list(sim.module._builds)}
        with runtime.kernel_builds(self.label, self.make):
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            elapsed = time.perf_counter() - start, time.process_time() - cpu
        ran = [b for b in list(sim.module._builds) if b.launches > before.get(id(b), 0)]
        mine = {id(m) for m in self.modules}
        wrong = [b for b in ran if id(b.module) not in mine or b.openmp != (self.threads > 1)
                 or b.module.threads() != self.threads
                 or not _contains(b.flags, self.opt)]
        if not ran or wrong:
            raise BuildMissed(
                f"{what} timed as build {self.label!r} ({' '.join(self.opt)}, {self.threads} "
                f"OS threads) " + ("launched nothing" if not ran else
                                   "launched " + ", ".join(f"{b.library_path.name} ({' '.join(b.flags)})"
                                                          for b in wrong)) +
                ": the build substitution missed, so the figures would not be this build's")
        self.launches += sum(b.launches - before.get(id(b), 0) for b in ran)
        return elapsed


def workloads(args, rng):
    n, c, h = args.batch, 128, 16
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = (rng.standard_normal((c, c, 3, 3)) / 30).astype(np.float32)
    dy = rng.standard_normal((n, c, h, h)).astype(np.float32)
    m = args.gemm
    a = rng.standard_normal((m, m)).astype(np.float32)
    b = rng.standard_normal((m, m)).astype(np.float32)
    conv_flops = 2 * n * h * h * c * c * 9
    return {
        "conv2d_forward": ("conv2d", conv_flops,
                           lambda: ops.conv2d.conv2d_forward(x, w, None, 1, 1)),
        "conv2d_backward_input": ("conv2d", conv_flops,
                                  lambda: ops.conv2d.conv2d_backward_input(dy, w, x.shape, 1, 1)),
        "conv2d_backward_weight": ("conv2d", conv_flops,
                                   lambda: ops.conv2d.conv2d_backward_weight(dy, x, w.shape, 1,
                                                                             1)),
        "sgemm_nn": ("gemm", 2 * m ** 3, lambda: ops.gemm.gemm(a, b)),
        "sgemm_nt": ("gemm", 2 * m ** 3, lambda: ops.gemm.gemm(a, b, transpose_b=True)),
        "sgemm_tn": ("gemm", 2 * m ** 3, lambda: ops.gemm.gemm(a, b, transpose_a=True)),
    }


def time_kernels(args):
    rng = np.random.default_rng(0)
    cupycnn.use("sim")
    work = workloads(args, rng)
    if args.kernels:
        unknown = sorted(set(args.kernels) - set(work))
        if unknown:
            raise SystemExit(f"--kernels: no workload {', '.join(unknown)} (workloads: "
                             f"{', '.join(work)})")
        work = {k: v for k, v in work.items() if k in args.kernels}
    compared = builds(args)
    for build in compared.values():                  # build and warm up every build once
        for kernel, (_, _, fn) in work.items():
            build.run(kernel, fn)
    times = {(k, b): [] for k in work for b in compared}
    order = list(compared)
    for r in range(args.rounds):
        for kernel, (_, _, fn) in work.items():
            for name in (order if r % 2 == 0 else order[::-1]):
                times[(kernel, name)].append(compared[name].run(kernel, fn))
        print(f"  round {r + 1}/{args.rounds}, load {_load()}", file=sys.stderr, flush=True)
    results = {key: statistics.median(v[0] for v in values) for key, values in times.items()}
    cpu = {key: statistics.median(v[1] for v in values) for key, values in times.items()}
    return work, compared, results, cpu


def barrier_costs(args):
    """ns per thread per barrier and per shuffle, for each build and block size."""
    rows = []
    for name, build in builds(args).items():
        threads = build.threads
        module = sim.Module(BARRIER_PROBE, name="barrier_probe.cu", opt=build.opt,
                            threads=threads)
        for kernel in ("barriers", "shuffles"):
            for block in (32, 256):
                grid = 8 * max(1, threads)
                out = np.zeros(grid * block, np.float32)
                rounds = 400 if kernel == "barriers" else 800

                def run(r):
                    start = time.perf_counter()
                    module.get_function(kernel)((grid,), (block,), (out, np.int32(r)))
                    return time.perf_counter() - start
                run(rounds)
                samples = []
                for _ in range(args.rounds):
                    samples.append(run(rounds) - run(0))
                per = 2 * rounds if kernel == "barriers" else rounds
                ns = statistics.median(samples) / (per * grid * block) * 1e9
                rows.append((name, kernel, block, ns))
    return rows


def _load():
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv=None):
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = _load()
    work, compared, results, cpu = time_kernels(args)
    names = list(compared)
    barriers = [] if args.no_barriers else barrier_costs(args)
    print(f"`python benchmarks/sim_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
          f", {started}; {len(os.sched_getaffinity(0))} usable CPUs; load average {load_before} "
          f"before, {_load()} after; median of {args.rounds} rounds")
    for name, build in compared.items():
        libraries = build.libraries()
        print(f"- {name}: {build.launches} launches checked on its own "
              f"{len(libraries)} libraries ({', '.join(sorted(b.library_path.name for b in libraries))}); "
              f"flags {' '.join(libraries[0].flags)}")
    print()
    base = names[0]
    print("| kernel | " + " | ".join(f"{n} ms" for n in names) + " | " +
          " | ".join(f"{n} speedup" for n in names[1:]) + " | GFLOP/s (fastest) |")
    print("| --- " * (1 + 2 * len(names)) + "|")
    for kernel, (_, flops, _) in work.items():
        ms = [1e3 * results[(kernel, n)] for n in names]
        speedups = [results[(kernel, base)] / results[(kernel, n)] for n in names[1:]]
        print(f"| {kernel} | " + " | ".join(f"{v:.1f}" for v in ms) + " | " +
              " | ".join(f"{v:.2f}x" for v in speedups) +
              f" | {flops / min(ms) / 1e6:.2f} |")
    print()
    print("CPU time of the process (all its threads; steadier than the wall time on a busy "
          "machine, for builds of one thread):")
    print()
    print("| kernel | " + " | ".join(f"{n} CPU ms" for n in names) + " | " +
          " | ".join(f"{n} CPU ratio" for n in names[1:]) + " |")
    print("| --- " * (2 * len(names)) + "|")
    for kernel in work:
        ms = [1e3 * cpu[(kernel, n)] for n in names]
        ratios = [cpu[(kernel, base)] / cpu[(kernel, n)] for n in names[1:]]
        print(f"| {kernel} | " + " | ".join(f"{v:.1f}" for v in ms) + " | " +
              " | ".join(f"{v:.2f}x" for v in ratios) + " |")
    if not barriers:
        return
    print()
    print("| build | primitive | block | ns per thread per barrier |")
    print("| --- | --- | --- | --- |")
    for name, kernel, block, ns in barriers:
        primitive = "__syncthreads" if kernel == "barriers" else "__shfl_xor_sync"
        print(f"| {name} | {primitive} | {block} | {ns:.1f} |")


if __name__ == "__main__":
    main()
