"""Conv2D kernels on ResNet-18's CIFAR layer shapes: forward, input gradient and weight gradient,
timed on the current device, in GFLOP/s (2 N C_out H_out W_out C_in kh kw per product).

    python benchmarks/conv2d.py --device cuda                # batch 128, against cuDNN
    python benchmarks/conv2d.py --device sim --batch 1       # the emulator, against NumPy

On cuda the same products are timed through PyTorch (torch.nn.functional.conv2d and
aten.convolution_backward, i.e. cuDNN, with cudnn.benchmark on so that it picks its fastest
algorithm) on the same GPU in the same run, with TF32 off (the FP32 comparison) and on
(PyTorch's default for convolutions), and the kernels' results are
compared with PyTorch's FP32 ones. PyTorch is imported only there. On sim and numpy the
comparison is the NumPy reference (cupycnn/reference/conv2d.py, float32) at the same batch.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source tree

import cupycnn  # noqa: E402
from cupycnn.ops import conv2d as ops  # noqa: E402
from cupycnn.reference import conv2d as reference  # noqa: E402

# ResNet-18 for CIFAR (32x32 inputs, 3x3 stem): every distinct convolution.
# (name, C_in, C_out, input size, kernel, stride, padding)
LAYERS = [
    ("stem 3->64 32x32", 3, 64, 32, 3, 1, 1),
    ("64->64 32x32", 64, 64, 32, 3, 1, 1),
    ("64->128 32x32 s2", 64, 128, 32, 3, 2, 1),
    ("128->128 16x16", 128, 128, 16, 3, 1, 1),
    ("128->256 16x16 s2", 128, 256, 16, 3, 2, 1),
    ("256->256 8x8", 256, 256, 8, 3, 1, 1),
    ("256->512 8x8 s2", 256, 512, 8, 3, 2, 1),
    ("512->512 4x4", 512, 512, 4, 3, 1, 1),
    ("1x1 64->128 s2", 64, 128, 32, 1, 2, 0),
    ("1x1 128->256 s2", 128, 256, 16, 1, 2, 0),
    ("1x1 256->512 s2", 256, 512, 8, 1, 2, 0),
]
PRODUCTS = ("forward", "input grad", "weight grad")


def timed(fn, repeats, synchronize=cupycnn.synchronize):
    """Median seconds of `repeats` runs after one warm-up (which also compiles the kernels and
    lets cuDNN pick its algorithm)."""
    fn()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def our_products(x, w, b, dy, stride, padding):
    return {
        "forward": lambda: ops.conv2d_forward(x, w, b, stride, padding),
        "input grad": lambda: ops.conv2d_backward_input(dy, w, x.shape, stride, padding),
        "weight grad": lambda: ops.conv2d_backward_weight(dy, x, w.shape, stride, padding),
    }


def numpy_products(x, w, b, dy, stride, padding):
    return {
        "forward": lambda: reference.conv2d_forward(x, w, b, stride, padding),
        "input grad": lambda: reference.conv2d_backward_input(dy, w, x.shape, stride, padding),
        "weight grad": lambda: reference.conv2d_backward_weight(dy, x, w.shape, stride, padding),
    }


def torch_products(torch, x, w, b, dy, stride, padding):
    """cuDNN through PyTorch; x, w, b, dy are host arrays copied to the GPU."""
    tx, tw, tb, tdy = (torch.from_numpy(a).cuda() for a in (x, w, b, dy))
    aten = torch.ops.aten

    def backward(mask):
        return aten.convolution_backward(tdy, tx, tw, [tw.shape[0]], [stride] * 2, [padding] * 2,
                                         [1, 1], False, [0, 0], 1, mask)

    return {
        "forward": lambda: torch.nn.functional.conv2d(tx, tw, tb, stride, padding),
        "input grad": lambda: backward([True, False, False])[0],
        "weight grad": lambda: backward([False, True, False])[1],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, choices=cupycnn.DEVICES,
                        help="default: cuda where a GPU is usable, else sim")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per batch (default 128 on cuda, 1 on sim and numpy)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per product, median reported (default 20 on cuda, 1 "
                             "on sim and numpy)")
    parser.add_argument("--layers", default=None, metavar="TEXT",
                        help="only the layers whose name contains TEXT")
    args = parser.parse_args()
    device = cupycnn.use(args.device or ("cuda" if cupycnn.cuda_available() else "sim"))
    on_gpu = device == "cuda"
    batch = args.batch or (128 if on_gpu else 1)
    repeats = args.repeats or (20 if on_gpu else 1)
    layers = [l for l in LAYERS if args.layers is None or args.layers in l[0]]
    if not layers:
        parser.error(f"no layer name contains {args.layers!r}")

    torch = None
    if on_gpu:
        import torch   # only on the GPU machine: the cuDNN baseline
        torch.backends.cudnn.benchmark = True    # cuDNN's fastest algorithm for each shape
        versus = ["cuDNN fp32", "cuDNN tf32"]
    else:
        versus = [] if device == "numpy" else ["numpy"]
    print(f"conv2d on {device}, batch {batch}, median of {repeats} run(s); GFLOP/s = "
          f"2 N C_out H_out W_out C_in kh kw / time; 'x ref' = our GFLOP/s over the reference's")
    header = f"{'layer':<20} {'product':<12} {'ms':>9} {'GFLOP/s':>9}"
    for v in versus:
        header += f" {v + ' ms':>15} {'x ' + v:>14}"
    if on_gpu:
        header += f" {'rel. err vs torch':>18}"
    print(header)

    rng = np.random.default_rng(0)
    wall = time.perf_counter()
    for name, c_in, c_out, size, k, stride, padding in layers:
        x = rng.standard_normal((batch, c_in, size, size)).astype(np.float32)
        w = (rng.standard_normal((c_out, c_in, k, k)) / np.sqrt(c_in * k * k)).astype(np.float32)
        b = rng.standard_normal(c_out).astype(np.float32)
        out = reference.output_size(size, size, k, stride, padding)
        dy = rng.standard_normal((batch, c_out) + out).astype(np.float32)
        flops = 2.0 * batch * c_out * out[0] * out[1] * c_in * k * k
        ours = our_products(*(cupycnn.asarray(a) for a in (x, w, b, dy)), stride, padding)
        baselines = {}
        if on_gpu:
            for tf32 in (False, True):
                torch.backends.cudnn.allow_tf32 = tf32
                products = torch_products(torch, x, w, b, dy, stride, padding)
                key = versus[int(tf32)]
                baselines[key] = {p: timed(products[p], repeats, torch.cuda.synchronize)
                                  for p in PRODUCTS}
                if not tf32:
                    expected = {p: products[p]().cpu().numpy() for p in PRODUCTS}
        elif versus:
            products = numpy_products(x, w, b, dy, stride, padding)
            baselines["numpy"] = {p: timed(products[p], repeats) for p in PRODUCTS}
        for product in PRODUCTS:
            seconds = timed(ours[product], repeats)
            row = f"{name:<20} {product:<12} {seconds * 1e3:>9.3f} {flops / seconds / 1e9:>9.1f}"
            for v in versus:
                base = baselines[v][product]
                row += f" {base * 1e3:>15.3f} {base / seconds:>14.2f}"
            if on_gpu:
                got = cupycnn.asnumpy(ours[product]()).astype(np.float64)
                ref = expected[product].astype(np.float64)
                row += f" {np.linalg.norm(got - ref) / np.linalg.norm(ref):>18.1e}"
            print(row, flush=True)
    print(f"total wall time {time.perf_counter() - wall:.1f} s")


if __name__ == "__main__":
    main()
