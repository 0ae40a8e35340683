"""Conv2D on ResNet-18's CIFAR layer shapes (3x3 stem, batch 256): every version of every product
(forward, input gradient, weight gradient) against its time floor and against cuDNN through
PyTorch at the same precision, NCHW and channels_last.

    python benchmarks/conv2d.py --device cuda                    # on a GPU: the measurement
    python benchmarks/conv2d.py --roofline                       # the floor table, no GPU needed
    python benchmarks/conv2d.py --device sim --batch 2 --layers stem --repeats 1   # dry run

Versions (ops/conv2d.py): direct (fp32), tiled (fp32), tensor_core (tf32 and bf16). The floor of
a product at a precision is max(FLOPs / peak, compulsory bytes / memory bandwidth), with
FLOPs = 2 N C_out H_out W_out C_in kh kw and the compulsory bytes those of the two operands read
once and the result written once, in FP32 storage (ours at every precision). The ceilings are
the H200's (CEILINGS below: measured on a lent H200 where the project has the figure, the
datasheet otherwise, each labelled). "% floor" is floor / time; "x cuDNN" is cuDNN's time over
ours (above 1: faster than cuDNN). cuDNN runs with cudnn.benchmark on (its fastest algorithm per
shape); at tf32 with allow_tf32, at bf16 on BF16 tensors (what torch.autocast gives a conv).
On sim and numpy (a dry run of the script) the baseline is PyTorch's CPU convolution when torch
is importable, and only the times are meaningful as a check that everything runs.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source tree

import cupycnn  # noqa: E402
from cupycnn.ops import conv2d as ops  # noqa: E402
from cupycnn.reference import conv2d as reference  # noqa: E402

# ResNet-18 for CIFAR (32x32 inputs, 3x3 stem): every distinct convolution, with how many times
# it occurs in the network. (name, C_in, C_out, input size, kernel, stride, padding, count)
LAYERS = [
    ("stem 3->64 32x32", 3, 64, 32, 3, 1, 1, 1),
    ("64->64 32x32", 64, 64, 32, 3, 1, 1, 4),
    ("64->128 32x32 s2", 64, 128, 32, 3, 2, 1, 1),
    ("128->128 16x16", 128, 128, 16, 3, 1, 1, 3),
    ("128->256 16x16 s2", 128, 256, 16, 3, 2, 1, 1),
    ("256->256 8x8", 256, 256, 8, 3, 1, 1, 3),
    ("256->512 8x8 s2", 256, 512, 8, 3, 2, 1, 1),
    ("512->512 4x4", 512, 512, 4, 3, 1, 1, 3),
    ("1x1 64->128 s2", 64, 128, 32, 1, 2, 0, 1),
    ("1x1 128->256 s2", 128, 256, 16, 1, 2, 0, 1),
    ("1x1 256->512 s2", 256, 512, 8, 1, 2, 0, 1),
]
PRODUCTS = ("forward", "input grad", "weight grad")
# (version, precision) in the order of the progression.
VERSIONS = [("direct", "fp32"), ("tiled", "fp32"), ("tensor_core", "tf32"),
            ("tensor_core", "bf16")]
# H200 SXM ceilings: (value, source). Matrix rates are dense (no sparsity).
CEILINGS = {
    "bytes/s": (4.3e12, "measured: device-to-device copy on a lent H200, 2026-10-28 and 11-04"),
    "fp32": (67e12, "datasheet (H100/H200 SXM FP32, no tensor cores)"),
    "tf32": (495e12, "datasheet (dense TF32 tensor core)"),
    "bf16": (788e12, "measured: 8192^3 BF16 matmul through PyTorch on a lent H200 (datasheet "
                     "989)"),
}


def shapes(layer, batch):
    name, c_in, c_out, size, k, stride, padding, count = layer
    ho, wo = reference.output_size(size, size, k, stride, padding)
    return dict(name=name, n=batch, c=c_in, o=c_out, h=size, w=size, k=k, stride=stride,
                padding=padding, ho=ho, wo=wo, count=count)


def flops(s):
    """2 N C_out H_out W_out C_in kh kw: the same for each of the three products."""
    return 2.0 * s["n"] * s["o"] * s["ho"] * s["wo"] * s["c"] * s["k"] * s["k"]


def compulsory_bytes(s, product, itemsize=4):
    x = s["n"] * s["c"] * s["h"] * s["w"]
    y = s["n"] * s["o"] * s["ho"] * s["wo"]
    w = s["o"] * s["c"] * s["k"] * s["k"]
    return itemsize * {"forward": x + w + y, "input grad": y + w + x, "weight grad": y + x + w}[
        product]


def floor_seconds(s, product, precision):
    return max(flops(s) / CEILINGS[precision][0],
               compulsory_bytes(s, product) / CEILINGS["bytes/s"][0])


def roofline_table(batch):
    """Markdown: per layer, FLOPs, compulsory bytes, intensity and the floor at each precision of
    one product (the three products of a layer have the same FLOPs and, in FP32 storage, the
    same compulsory bytes: x, w and y once each), and the total over the network's step."""
    precisions = ("fp32", "tf32", "bf16")
    lines = ["| layer (x count in ResNet-18) | GFLOP | MB | FLOP/B | "
             + " | ".join(f"floor {p} (us)" for p in precisions) + " | bound at tf32 / bf16 |",
             "|" + "---|" * 8]
    totals = dict.fromkeys(precisions, 0.0)
    for layer in LAYERS:
        s = shapes(layer, batch)
        f, b = flops(s), compulsory_bytes(s, "forward")
        floors = {p: floor_seconds(s, "forward", p) for p in precisions}
        for p in precisions:
            totals[p] += 3 * floors[p] * s["count"]
        bound = " / ".join("memory" if b / CEILINGS["bytes/s"][0] > f / CEILINGS[p][0]
                           else "compute" for p in ("tf32", "bf16"))
        lines.append(f"| {s['name']} (x{s['count']}) | {f / 1e9:.2f} | {b / 1e6:.1f} | "
                     f"{f / b:.0f} | " + " | ".join(f"{floors[p] * 1e6:.1f}" for p in precisions)
                     + f" | {bound} |")
    lines.append("| **the step's 20 convolutions, 3 products each** | | | | "
                 + " | ".join(f"**{totals[p] * 1e3:.2f} ms**" for p in precisions) + " | |")
    return "\n".join(lines)


def timed(fn, repeats, synchronize):
    """Median seconds of `repeats` runs after one warm-up (compiles; lets cuDNN pick)."""
    fn()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def our_products(x, w, b, dy, stride, padding, version):
    return {
        "forward": lambda: ops.conv2d_forward(x, w, b, stride, padding, version=version),
        "input grad": lambda: ops.conv2d_backward_input(dy, w, x.shape, stride, padding,
                                                        version=version),
        "weight grad": lambda: ops.conv2d_backward_weight(dy, x, w.shape, stride, padding,
                                                          version=version),
    }


def torch_products(torch, arrays, stride, padding, precision, channels_last, device):
    """PyTorch's convolution (cuDNN on cuda) at `precision`, NCHW or channels_last."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    tx, tw, tb, tdy = (torch.from_numpy(a).to(device=device, dtype=dtype) for a in arrays)
    tx, tw, tdy = (t.contiguous(memory_format=fmt) for t in (tx, tw, tdy))
    aten = torch.ops.aten

    def backward(mask):
        return aten.convolution_backward(tdy, tx, tw, [tw.shape[0]], [stride] * 2, [padding] * 2,
                                         [1, 1], False, [0, 0], 1, mask)

    return {
        "forward": lambda: torch.nn.functional.conv2d(tx, tw, tb, stride, padding),
        "input grad": lambda: backward([True, False, False])[0],
        "weight grad": lambda: backward([False, True, False])[1],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, choices=cupycnn.DEVICES,
                        help="default: cuda where a GPU is usable, else sim")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per batch (default 256 on cuda, 2 elsewhere)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per measurement, median reported (default 20 on cuda "
                             "(3 for the direct kernels), 1 elsewhere)")
    parser.add_argument("--layers", default=None, metavar="TEXT",
                        help="only the layers whose name contains TEXT")
    parser.add_argument("--versions", default="direct,tiled,tensor_core",
                        help="comma-separated kernel versions to time")
    parser.add_argument("--roofline", action="store_true",
                        help="print the roofline table (Markdown) for --batch and stop")
    parser.add_argument("--json", metavar="PATH",
                        help="write summary figures (per version and precision: the lowest and "
                             "the geometric-mean ratio to the baseline, NCHW and NHWC; the "
                             "geometric-mean %% of floor) as a JSON object")
    args = parser.parse_args(argv)
    if args.roofline:
        batch = args.batch or 256
        print(f"Roofline of ResNet-18 (CIFAR stem) convolutions, batch {batch}, H200 ceilings:")
        for key, (value, source) in CEILINGS.items():
            print(f"- {key}: {value / 1e12:g} {'TB/s' if key == 'bytes/s' else 'TFLOP/s'} "
                  f"({source})")
        print(roofline_table(batch))
        return 0
    device = cupycnn.use(args.device or ("cuda" if cupycnn.cuda_available() else "sim"))
    on_gpu = device == "cuda"
    batch = args.batch or (256 if on_gpu else 2)
    versions = [v for v in VERSIONS if v[0] in args.versions.split(",")]
    layers = [l for l in LAYERS if args.layers is None or args.layers in l[0]]
    if not layers or not versions:
        parser.error("no layer or version selected")
    try:
        import torch
        torch.backends.cudnn.benchmark = True
        torch_device = "cuda" if on_gpu else "cpu"
    except ImportError:
        torch = None
    synchronize = cupycnn.synchronize
    torch_sync = (torch.cuda.synchronize if on_gpu else (lambda: None)) if torch else None
    baseline = "cuDNN" if on_gpu else "torch CPU"
    print(f"conv2d on {device}, batch {batch}; median of the repeats; TFLOP/s = 2 N C_out H_out "
          f"W_out C_in kh kw / time; % floor = floor / time (H200 ceilings); x {baseline} = "
          f"{baseline} time / ours, NCHW and channels_last, same precision")
    print(f"{'layer':<18} {'product':<11} {'version':<17} {'ms':>9} {'TFLOP/s':>8} "
          f"{'% floor':>8} {'x ' + baseline + ' NCHW':>17} {'x ' + baseline + ' NHWC':>17} "
          f"{'rel err':>8}")
    rng = np.random.default_rng(0)
    wall = time.perf_counter()
    summary = {}
    for layer in layers:
        s = shapes(layer, batch)
        x = rng.standard_normal((batch, s["c"], s["h"], s["w"])).astype(np.float32)
        w = (rng.standard_normal((s["o"], s["c"], s["k"], s["k"])) /
             np.sqrt(s["c"] * s["k"] ** 2)).astype(np.float32)
        b = rng.standard_normal(s["o"]).astype(np.float32)
        dy = rng.standard_normal((batch, s["o"], s["ho"], s["wo"])).astype(np.float32)
        dev = [cupycnn.asarray(a) for a in (x, w, b, dy)]
        # The FP32 result each version is compared with: PyTorch's FP32 convolution on the GPU,
        # the float64 reference elsewhere (computed at most once per product).
        exact = dict.fromkeys(PRODUCTS)
        if torch is not None and on_gpu:
            torch.backends.cudnn.allow_tf32 = False
            products = torch_products(torch, (x, w, b, dy), s["stride"], s["padding"], "fp32",
                                      False, torch_device)
            exact = {p: products[p]().double().cpu().numpy() for p in PRODUCTS}
        for version, precision in versions:
            repeats = args.repeats or ((3 if version == "direct" else 20) if on_gpu else 1)
            with cupycnn.set_precision(precision):
                ours = our_products(*dev, s["stride"], s["padding"], version)
                theirs = {}
                if torch is not None:
                    if precision == "tf32" or precision == "fp32":
                        torch.backends.cudnn.allow_tf32 = precision == "tf32"
                    for cl in (False, True):
                        products = torch_products(torch, (x, w, b, dy), s["stride"],
                                                  s["padding"], precision, cl, torch_device)
                        theirs[cl] = {p: timed(products[p], repeats, torch_sync)
                                      for p in PRODUCTS}
                for product in PRODUCTS:
                    seconds = timed(ours[product], repeats, synchronize)
                    got = cupycnn.asnumpy(ours[product]()).astype(np.float64)
                    if exact[product] is None:
                        exact[product] = _reference(product, x, w, b, dy, s)
                    err = (np.linalg.norm(got - exact[product]) /
                           np.linalg.norm(exact[product]))
                    floor = floor_seconds(s, product, precision)
                    row = (f"{s['name']:<18} {product:<11} {version + ' ' + precision:<17} "
                           f"{seconds * 1e3:>9.3f} {flops(s) / seconds / 1e12:>8.2f} "
                           f"{100 * floor / seconds:>7.1f}%")
                    for cl in (False, True):
                        row += (f" {theirs[cl][product] / seconds:>17.2f}" if theirs
                                else f" {'-':>17}")
                    print(row + f" {err:>8.1e}", flush=True)
                    key = f"{version} {precision}"
                    summary.setdefault(key, {"floor": []})["floor"].append(floor / seconds)
                    for cl in (False, True) if theirs else ():
                        summary[key].setdefault("NHWC" if cl else "NCHW", []).append(
                            theirs[cl][product] / seconds)
    print(f"total wall time {time.perf_counter() - wall:.1f} s")
    figures = {}
    for key, values in summary.items():
        tag = key.replace(" ", "_")
        figures[f"conv2d {tag} % of floor, geomean"] = {
            "value": _sig(100 * _geomean(values["floor"])), "unit": "%"}
        for layout in ("NCHW", "NHWC"):
            if layout in values:
                figures[f"conv2d {tag} x {baseline} {layout}, geomean"] = _sig(
                    _geomean(values[layout]))
                figures[f"conv2d {tag} x {baseline} {layout}, lowest"] = _sig(min(values[layout]))
    for name, value in figures.items():
        print(f"{name}: {value['value'] if isinstance(value, dict) else value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def _sig(value):
    return float(f"{value:.3g}")


def _geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _reference(product, x, w, b, dy, s):
    """The float64 fp32 result, for the relative error column."""
    x, w, b, dy = (a.astype(np.float64) for a in (x, w, b, dy))
    st, pd = s["stride"], s["padding"]
    if product == "forward":
        return reference.conv2d_forward(x, w, b, st, pd)
    if product == "input grad":
        return reference.conv2d_backward_input(dy, w, x.shape, st, pd)
    return reference.conv2d_backward_weight(dy, x, w.shape, st, pd)


if __name__ == "__main__":
    raise SystemExit(main())
