"""Conv2D against its floor and against cuDNN: every kernel version of every product (forward,
input gradient, weight gradient) at every ResNet-18 shape (CIFAR stem, batch 256), next to cuDNN
through PyTorch at the same precision, NCHW and channels_last.

    python benchmarks/conv2d.py                              # on a GPU: everything (minutes)
    python benchmarks/conv2d.py --versions tiled,tensor_core --budget 25 --json F   # GPU session
    python benchmarks/conv2d.py --dry-run                    # sim, batch 1, one shape (CI)

What runs. The shapes are the distinct convolutions of ResNet-18 (benchmarks/roofline.py reads
them off the model). Per (shape, product, precision) the contenders are our versions at that
precision (ops/conv2d.py: fp32 "direct" and "tiled"; tf32 and bf16 "tensor_core") and cuDNN at
the same precision: fp32 with TF32 off, tf32 with it on, bf16 on BF16 tensors (what
torch.autocast runs a convolution on), each in NCHW and channels_last, cudnn.benchmark on (its
fastest algorithm per shape, found during the warm-up).

How it times. CUDA events (on the legacy default stream, which CuPy and PyTorch both use here)
around a batch of calls queued behind a short spin kernel, so the events time the GPU's work,
not Python's launch overhead; the batch has enough calls for about a millisecond. The contenders
of one (shape, product, precision) take turns, one batch each per round, for --repeats rounds,
and each one's median is reported: a slow moment of the GPU falls on all of them alike. The
inputs are fixed random normals, reused across rounds (tensors under the H200's 60 MB L2 may be
served from it, for cuDNN as for ours).

Columns. ms: the median time of one call; TFLOP/s: FLOPs / ms; % floor: the roofline floor at
that precision with FP32 storage (ours) over ms; x cuDNN: cuDNN's ms over ours, NCHW and NHWC
(above 1: ours is faster); rel err: ||ours - float64|| / ||float64|| against PyTorch's float64
convolution (the NumPy reference on sim and numpy). A result above its precision's TOLERANCE is
flagged WRONG and makes the exit status 1. --json writes the summary figures (per precision:
the geometric mean and the lowest ratio to the faster cuDNN layout, the geometric mean % of
floor, the shapes below 70% of cuDNN's speed).

On sim and numpy (--dry-run) the same code runs at batch 1 on one shape, against PyTorch's CPU
convolution where PyTorch is installed (no TF32 there: its "tf32" is plain FP32): a check that
every path runs and agrees, not a measurement.
"""
import time

_STARTED = time.perf_counter()      # --budget counts from here: imports and compiles included

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

import roofline  # noqa: E402
import timing  # noqa: E402

import cupycnn  # noqa: E402
from cupycnn.ops import conv2d as ops  # noqa: E402
from cupycnn.reference import conv2d as reference  # noqa: E402

PRODUCTS = roofline.PRODUCTS
# (version, precision), in the order of the progression.
VERSIONS = [("direct", "fp32"), ("tiled", "fp32"), ("tensor_core", "tf32"),
            ("tensor_core", "bf16")]
# The version each precision runs by default (ops.conv2d.resolve_version): the summary's.
DEFAULT_VERSION = {"fp32": "tiled", "tf32": "tensor_core", "bf16": "tensor_core"}
# A result further than this from float64 is wrong, not rounded (a bug gives ~1): a few times
# the precision's expected error (fp32 sums of up to N H_out W_out = 262144 terms; TF32 keeps 10
# mantissa bits, BF16 7).
TOLERANCE = {"fp32": 1e-4, "tf32": 5e-3, "bf16": 3e-2}
TARGET = 0.7            # issue 10: each tensor-core conv at least 70% of cuDNN's speed
BATCH_SECONDS = 1e-3    # GPU time a timed batch of calls aims at
MAX_CALLS = 64          # calls per batch at most
CONTENDER_SECONDS = 0.5  # rounds of one contender stop after about this much GPU time


# ---------------------------------------------------------------------------------- timing
class GpuTimer:
    """Times fn() on the GPU with CuPy's events on the legacy default stream, the stream both
    our kernels and PyTorch's launch on (checked), behind a spin kernel that keeps the GPU busy
    while Python queues the calls."""

    def __init__(self, torch):
        import cupy
        self.cupy = cupy
        if cupy.cuda.get_current_stream().ptr != 0 or (
                torch is not None and torch.cuda.current_stream().cuda_stream != 0):
            raise SystemExit("conv2d.py: CuPy and PyTorch must both launch on the legacy "
                             "default stream for one set of events to time both")
        # Spins for `ns` nanoseconds of the GPU's global timer (no clock rate needed).
        self.spin = cupy.RawKernel(r'''
            extern "C" __global__ void spin(long long ns) {
              unsigned long long start, now;
              asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
              do {
                asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
              } while (now - start < (unsigned long long)ns);
            }''', "spin")

    def sync(self):
        self.cupy.cuda.Device().synchronize()

    def __call__(self, fn, calls, host_seconds):
        """Seconds per call of `calls` back-to-back calls of fn, on the GPU."""
        cupy = self.cupy
        # Long enough for Python to queue every call before the GPU reaches the start event.
        ns = int(1e9 * min(0.05, 2 * calls * host_seconds + 20e-6))
        self.spin((1,), (1,), (np.int64(ns),))
        return timing.gpu_seconds(fn, calls)


class HostTimer:
    """sim and numpy: wall-clock time of fn(), the device synchronized after it."""

    def sync(self):
        cupycnn.synchronize()

    def __call__(self, fn, calls, host_seconds):
        return timing.wall_seconds(fn, calls, self.sync)


def measure(contenders, timer, rounds):
    """({name: median seconds per call}, {name: the first call's result}): each contender
    (name -> fn) called once to warm up (compiles, cuDNN's algorithm search), then timed in
    turns, one batch of calls each per round."""
    plan, first = {}, {}
    for name, fn in contenders.items():
        t0 = time.perf_counter()
        first[name] = fn()
        timer.sync()
        once = time.perf_counter() - t0        # an upper bound: compiles, enqueue, GPU time
        host = once
        if isinstance(timer, GpuTimer):        # again, warm: enqueue time and one call's
            t0 = time.perf_counter()
            fn()
            host = time.perf_counter() - t0
            timer.sync()
            once = time.perf_counter() - t0
        calls = max(1, min(MAX_CALLS, int(BATCH_SECONDS / max(once, 1e-6))))
        plan[name] = (calls, host, min(rounds, max(1, int(CONTENDER_SECONDS / once))))
    times = {name: [] for name in contenders}
    for r in range(rounds):
        for name, fn in contenders.items():
            calls, host, wanted = plan[name]
            if r < wanted:
                times[name].append(timer(fn, calls, host))
    return {name: statistics.median(t) for name, t in times.items()}, first


# ------------------------------------------------------------------------------ contenders
def our_products(conv, x, w, dy, version):
    s, p = conv.stride, conv.padding
    return {
        "forward": lambda: ops.conv2d_forward(x, w, None, s, p, version=version),
        "input grad": lambda: ops.conv2d_backward_input(dy, w, x.shape, s, p, version=version),
        "weight grad": lambda: ops.conv2d_backward_weight(dy, x, w.shape, s, p,
                                                          version=version),
    }


def set_cudnn_tf32(torch, on):
    """TF32 in cuDNN's convolutions on or off (PyTorch's newer setting where it has it)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "tf32" if on else "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = on


def torch_products(torch, conv, arrays, dtype, channels_last, device):
    """PyTorch's three products (cuDNN on cuda) on `dtype` tensors, NCHW or channels_last."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    tx, tw, tdy = (torch.from_numpy(a).to(device=device, dtype=dtype).contiguous(
        memory_format=fmt) for a in arrays)
    s, p = list(conv.stride), list(conv.padding)

    def backward(mask):
        return torch.ops.aten.convolution_backward(tdy, tx, tw, None, s, p, [1, 1], False,
                                                   [0, 0], 1, mask)

    return {
        "forward": lambda: torch.nn.functional.conv2d(tx, tw, None, s, p),
        "input grad": lambda: backward([True, False, False])[0],
        "weight grad": lambda: backward([False, True, False])[1],
    }


def exact_results(torch, conv, arrays, on_gpu):
    """The three products in float64: PyTorch's on the GPU, the NumPy reference elsewhere."""
    x, w, dy = arrays
    s, p = conv.stride, conv.padding
    if on_gpu:
        tx, tw, tdy = (torch.from_numpy(a).cuda().double() for a in arrays)
        grads = torch.ops.aten.convolution_backward(tdy, tx, tw, None, list(s), list(p), [1, 1],
                                                    False, [0, 0], 1, [True, True, False])
        return {"forward": torch.nn.functional.conv2d(tx, tw, None, s, p),
                "input grad": grads[0], "weight grad": grads[1]}
    x, w, dy = (a.astype(np.float64) for a in arrays)
    return {"forward": reference.conv2d_forward(x, w, None, s, p),
            "input grad": reference.conv2d_backward_input(dy, w, x.shape, s, p),
            "weight grad": reference.conv2d_backward_weight(dy, x, w.shape, s, p)}


def relative_error(torch, got, exact, on_gpu):
    if on_gpu:
        got = torch.from_dlpack(got).double()
        return float(torch.linalg.vector_norm(got - exact) / torch.linalg.vector_norm(exact))
    got = cupycnn.asnumpy(got).astype(np.float64)
    return float(np.linalg.norm(got - exact) / np.linalg.norm(exact))


# ------------------------------------------------------------------------------------ main
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=cupycnn.DEVICES, default=None,
                        help="default: cuda where a GPU is usable, else sim")
    parser.add_argument("--dry-run", action="store_true",
                        help="sim, batch 1, one shape, one round: the code paths, for CI")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"images per batch (default {roofline.BATCH}; 1 on sim/numpy)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds of timed batches, median reported (default 10 on cuda, 1 "
                             "elsewhere)")
    parser.add_argument("--layers", default=None, metavar="TEXT",
                        help="only the shapes whose label contains TEXT, e.g. '3x3 s1 16x16'")
    parser.add_argument("--versions", default="direct,tiled,tensor_core",
                        help="comma-separated versions to time (default all)")
    parser.add_argument("--precisions", default="fp32,tf32,bf16")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="start no new shape once this many seconds have passed since the "
                             "script started (what was left out is said)")
    parser.add_argument("--json", metavar="PATH", help="write the summary figures here")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device = args.device or "sim"
        args.batch = args.batch or 1
        args.layers = args.layers or "64->128 1x1 s2"
    return parser, args


# The kernel files each version runs (ops/conv2d.py): precompile()'s list. A stale entry costs
# only warm-up time, never a wrong figure.
VERSION_FILES = {"direct": ("conv2d_direct",), "tiled": ("conv2d",),
                 "tensor_core": ("conv2d_tc", "conv2d")}     # conv2d: the split-K reduction


def precompile(versions):
    """Compile the kernel modules of `versions` before timing, several at once (NVRTC in
    threads; CuPy keeps them in its disk cache), so the first shape's warm-up does not pay for
    them one after another. Returns the seconds it took."""
    from concurrent.futures import ThreadPoolExecutor

    from cupycnn import machine_code, runtime
    from cupycnn.ops import tiles
    jobs = set()
    for version, precision in versions:
        for file in VERSION_FILES[version]:
            if file in tiles.TC_FILES:
                jobs |= {(file, tile.defines(precision)) for tile in tiles.TILES}
            else:
                jobs.add((file, ()))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(lambda job: runtime.get_kernel(
            job[0], machine_code.entry_points(job[0])[0], job[1]), sorted(jobs)))
    return time.perf_counter() - t0


def random_inputs(conv, rng):
    """x, w (scaled as PyTorch initialises it), dy: float32 standard normals."""
    x = rng.standard_normal((conv.n, conv.c, conv.h, conv.w)).astype(np.float32)
    w = (rng.standard_normal((conv.o, conv.c, conv.kh, conv.kw))
         / math.sqrt(conv.c * conv.kh * conv.kw)).astype(np.float32)
    dy = rng.standard_normal((conv.n, conv.o, conv.ho, conv.wo)).astype(np.float32)
    return x, w, dy


def time_shape(conv, count, versions, torch, timer, rounds, on_gpu):
    """One row per (product, version) of one shape: every precision of `versions`, our versions
    and cuDNN's two layouts interleaved per (product, precision)."""
    arrays = random_inputs(conv, np.random.default_rng(0))
    ours_in = [cupycnn.asarray(a) for a in arrays]
    exact = exact_results(torch, conv, arrays, on_gpu)
    rows = []
    for precision in [p for p in roofline.PRECISIONS if any(q == p for _, q in versions)]:
        mine = [v for v, p in versions if p == precision]
        baseline = {}
        if torch is not None:
            set_cudnn_tf32(torch, precision == "tf32")
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            baseline = {layout: torch_products(torch, conv, arrays, dtype, layout == "NHWC",
                                               "cuda" if on_gpu else "cpu")
                        for layout in ("NCHW", "NHWC")}
        with cupycnn.set_precision(precision):
            ours = {v: our_products(conv, *ours_in, v) for v in mine}
            for product in PRODUCTS:
                contenders = {v: ours[v][product] for v in mine}
                contenders.update({layout: fns[product] for layout, fns in baseline.items()})
                seconds, outputs = measure(contenders, timer, rounds)
                floor, _ = conv.floor(product, precision, itemsize=4)
                for version in mine:
                    t = seconds[version]
                    rows.append({
                        "shape": conv.label, "count": count, "product": product,
                        "precision": precision, "version": version, "seconds": t,
                        "tflops": conv.flops(product) / t / 1e12, "floor": floor / t,
                        "error": relative_error(torch, outputs[version], exact[product], on_gpu),
                        **{f"{layout} seconds": seconds[layout] for layout in baseline},
                        **{f"x {layout}": seconds[layout] / t for layout in baseline}})
                    print(format_row(rows[-1]), flush=True)
    return rows


def header(base):
    return (f"{'shape':<22} {'product':<11} {'precision':<9} {'version':<11} {'ms':>9} "
            f"{'TFLOP/s':>8} {'% floor':>8} {base + ' ms':>10} {'x NCHW':>7} {'NHWC ms':>9} "
            f"{'x NHWC':>7} {'rel err':>8}")


def format_row(r):
    cells = ""
    for layout, width in (("NCHW", 10), ("NHWC", 9)):
        if f"x {layout}" in r:
            cells += f" {r[f'{layout} seconds'] * 1e3:>{width}.3f} {r[f'x {layout}']:>7.2f}"
        else:
            cells += f" {'-':>{width}} {'-':>7}"
    wrong = "  WRONG" if r["error"] > TOLERANCE[r["precision"]] else ""
    return (f"{r['shape']:<22} {r['product']:<11} {r['precision']:<9} {r['version']:<11} "
            f"{r['seconds'] * 1e3:>9.3f} {r['tflops']:>8.2f} {100 * r['floor']:>7.1f}%{cells} "
            f"{r['error']:>8.1e}{wrong}")


def main(argv=None):
    parser, args = parse_args(argv)
    device = cupycnn.use(args.device or ("cuda" if cupycnn.cuda_available() else "sim"))
    on_gpu = device == "cuda"
    batch = args.batch or (roofline.BATCH if on_gpu else 1)
    rounds = args.repeats or (10 if on_gpu else 1)
    wanted = set(args.versions.split(",")), set(args.precisions.split(","))
    versions = [(v, p) for v, p in VERSIONS if v in wanted[0] and p in wanted[1]]
    every = roofline.distinct(roofline.resnet18_convolutions(batch))
    shapes = [(c, n) for c, n in every if args.layers is None or args.layers in c.label]
    if not shapes or not versions:
        parser.error(f"nothing selected; shapes: {', '.join(c.label for c, _ in every)}; "
                     f"versions: {', '.join(f'{v} {p}' for v, p in VERSIONS)}")
    try:
        import torch
        torch.backends.cudnn.benchmark = True
    except ImportError:
        torch = None
    if on_gpu and torch is None:
        raise SystemExit("conv2d.py: PyTorch is needed on the GPU (cuDNN is the baseline)")
    timer = GpuTimer(torch) if on_gpu else HostTimer()
    base = "cuDNN" if on_gpu else "torch CPU"
    print(f"conv2d on {device}, batch {batch}, {rounds} round(s), medians; % floor: "
          f"benchmarks/roofline.py's floor (FP32 storage) / time; x {base}: {base} time / ours "
          f"(NCHW, channels_last), same precision; rel err against float64")
    if on_gpu:
        print(f"compiled the kernels in {precompile(versions):.1f} s")
    print(header(base))
    started = time.perf_counter()
    results, skipped = [], []
    for conv, count in shapes:
        if args.budget is not None and time.perf_counter() - _STARTED > args.budget:
            skipped.append(conv.label)
            continue
        results += time_shape(conv, count, versions, torch, timer, rounds, on_gpu)
    print(f"{len(results)} rows in {time.perf_counter() - started:.1f} s"
          + (f"; left out by --budget {args.budget:g} s: {', '.join(skipped)}" if skipped else ""))
    figures = summary(results, base, skipped)
    for name, value in figures.items():
        print(f"{name}: {value['value'] if isinstance(value, dict) else value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1), encoding="utf-8")
    wrong = [r for r in results if r["error"] > TOLERANCE[r["precision"]]]
    if wrong:
        print("WRONG results: " + "; ".join(f"{r['shape']} {r['product']} {r['version']} "
                                            f"{r['precision']}: {r['error']:.1e}" for r in wrong),
              file=sys.stderr)
        return 1
    return 0


def _geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _sig(value):
    return float(f"{value:.3g}")


def summary(results, base, skipped):
    """Per precision, for its default version: the ratio to the faster cuDNN layout (geometric
    mean over shapes and products, and the lowest with where), the geometric-mean % of floor and
    how many products are below TARGET of cuDNN's speed."""
    figures = {"shapes left out": len(skipped)}
    for precision, version in DEFAULT_VERSION.items():
        rows = [r for r in results if r["precision"] == precision and r["version"] == version]
        if not rows:
            continue
        tag = f"{version} {precision}"
        figures[f"{tag} % of floor, geomean"] = {
            "value": _sig(100 * _geomean([r["floor"] for r in rows])), "unit": "%"}
        if "x NCHW" in rows[0]:
            best = [min(r["x NCHW"], r["x NHWC"]) for r in rows]
            worst = min(range(len(rows)), key=best.__getitem__)
            figures[f"{tag} x {base} (faster layout), geomean"] = _sig(_geomean(best))
            figures[f"{tag} x {base} (faster layout), lowest"] = _sig(best[worst])
            figures[f"{tag} lowest at"] = f"{rows[worst]['shape']} {rows[worst]['product']}"
            figures[f"{tag} products under {TARGET:.0%} of {base}"] = (
                f"{sum(b < TARGET for b in best)} of {len(best)}")
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
