"""Images per second of each transform on a CIFAR-10 batch (128 x 32 x 32 x 3 uint8) on the
current device, against a named baseline in the same run:

    python benchmarks/augment.py [--device cuda|sim|numpy] [--batch 128] [--iterations 50]

| device | ours | baseline |
| --- | --- | --- |
| cuda | kernels/augment.cu | torchvision.transforms.v2 on the GPU if torchvision is importable (per image, as a DataLoader applies it; Normalize batched), otherwise CuPy (elementwise ops, fancy indexing, cupyx.scipy.ndimage.map_coordinates) |
| sim | kernels/augment.cu under the CPU emulator | the NumPy reference (cupycnn.reference.augment) |
| numpy | the NumPy reference | (none: it is the baseline) |

The transforms: normalize (CIFAR-10 mean/std), random_crop_flip (padding 4, flip 0.5) and
affine_warp (Keras ImageDataGenerator(rotation_range=15, width_shift_range=0.1,
height_shift_range=0.1, zoom_range=0.1, horizontal_flip=True), bilinear, fill "nearest"; the
torchvision baseline: RandomAffine(15, translate=(0.1, 0.1), scale=(0.9, 1.1), bilinear) +
RandomHorizontalFlip). Each figure is the median of --repeats timings of --iterations calls
after a warm-up; on cuda timed with CUDA events around the calls.
"""
import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cupycnn  # noqa: E402
from cupycnn.data import transforms as T  # noqa: E402
from cupycnn.reference import augment as reference  # noqa: E402
import timing  # noqa: E402

MEAN, STD = T.CIFAR10_MEAN, T.CIFAR10_STD


def ours():
    """The three transforms, fresh (seeded) for the current device."""
    return {
        "normalize": T.Normalize(MEAN, STD),
        "random_crop_flip": T.RandomCropFlip(4, MEAN, STD, seed=1),
        "affine_warp": T.ImageDataGenerator(15, 0.1, 0.1, 0.1, horizontal_flip=True, mean=MEAN,
                                            std=STD, seed=1),
    }


def numpy_reference():
    """The same three on the NumPy reference (called directly, whatever the device)."""
    counter = iter(range(1 << 62))
    generator = ours()["affine_warp"]
    return {
        "normalize": lambda x: reference.normalize(x, MEAN, STD),
        "random_crop_flip": lambda x: reference.random_crop_flip(x, MEAN, STD, 4, seed=1,
                                                                 stream=next(counter)),
        "affine_warp": lambda x: reference.affine_warp(x, MEAN, STD,
                                                       generator.ranges_for(*x.shape[1:3]),
                                                       seed=1, stream=next(counter)),
    }


def torchvision_baseline():
    """torchvision.transforms.v2 on GPU tensors, per image for the random ones."""
    import torch
    from torchvision.transforms import v2

    mean = torch.tensor(MEAN, device="cuda").view(1, 3, 1, 1)
    std = torch.tensor(STD, device="cuda").view(1, 3, 1, 1)
    crop_flip = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    affine = v2.Compose([v2.RandomAffine(15, translate=(0.1, 0.1), scale=(0.9, 1.1),
                                         interpolation=v2.InterpolationMode.BILINEAR),
                         v2.RandomHorizontalFlip()])

    def chw(x):     # the loader's uint8 NHWC CuPy batch as a torch NCHW uint8 tensor
        return torch.from_dlpack(x).permute(0, 3, 1, 2)

    def normalise(x):
        return (x.float() / 255 - mean) / std

    return "torchvision.transforms.v2 (GPU)", {
        "normalize": lambda x: normalise(chw(x)).contiguous(),
        "random_crop_flip": lambda x: normalise(torch.stack([crop_flip(i) for i in chw(x)])),
        "affine_warp": lambda x: normalise(torch.stack([affine(i) for i in chw(x)])),
    }, torch.cuda.synchronize


def cupy_baseline():
    """CuPy array code: elementwise normalisation, fancy-indexed crops, map_coordinates."""
    import cupy
    from cupyx.scipy import ndimage

    mean = cupy.asarray(MEAN, dtype=cupy.float32)
    std = cupy.asarray(STD, dtype=cupy.float32)

    def normalise(v):      # [B, H, W, C] float32 0..255 -> normalised NCHW
        return cupy.ascontiguousarray(((v / 255 - mean) / std).transpose(0, 3, 1, 2))

    def crop_flip(x):
        b, h, w, _ = x.shape
        padded = cupy.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
        oy, ox = cupy.random.randint(0, 9, b), cupy.random.randint(0, 9, b)
        flip = cupy.random.random(b) < 0.5
        cols = cupy.arange(w)
        cols = cupy.where(flip[:, None], w - 1 - cols, cols) + ox[:, None]
        rows = cupy.arange(h) + oy[:, None]
        crops = padded[cupy.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
        return normalise(crops.astype(cupy.float32))

    def affine(x):
        b, h, w, c = x.shape
        angle = cupy.deg2rad(cupy.random.uniform(-15, 15, b)).astype(cupy.float32)
        zx, zy = (cupy.random.uniform(0.9, 1.1, b).astype(cupy.float32) for _ in range(2))
        tx = cupy.random.uniform(-0.1 * w, 0.1 * w, b).astype(cupy.float32)
        ty = cupy.random.uniform(-0.1 * h, 0.1 * h, b).astype(cupy.float32)
        flip = cupy.random.random(b) < 0.5
        ys, xs = cupy.meshgrid(cupy.arange(h, dtype=cupy.float32),
                               cupy.arange(w, dtype=cupy.float32), indexing="ij")
        xf = cupy.where(flip[:, None, None], w - 1 - xs, xs)
        u = xf - (w - 1) / 2 - tx[:, None, None]
        v = ys - (h - 1) / 2 - ty[:, None, None]
        cos, sin = cupy.cos(angle)[:, None, None], cupy.sin(angle)[:, None, None]
        src_x = (w - 1) / 2 + cos * zx[:, None, None] * u - sin * zy[:, None, None] * v
        src_y = (h - 1) / 2 + sin * zx[:, None, None] * u + cos * zy[:, None, None] * v
        shape = (b, h, w, c)
        coords = cupy.stack([cupy.broadcast_to(cupy.arange(b)[:, None, None, None], shape),
                             cupy.broadcast_to(src_y[..., None], shape),
                             cupy.broadcast_to(src_x[..., None], shape),
                             cupy.broadcast_to(cupy.arange(c), shape)]).astype(cupy.float32)
        return normalise(ndimage.map_coordinates(x.astype(cupy.float32), coords, order=1,
                                                 mode="nearest"))

    return "CuPy array code (cupyx.scipy.ndimage)", {
        "normalize": lambda x: normalise(x.astype(cupy.float32)),
        "random_crop_flip": crop_flip,
        "affine_warp": affine,
    }, cupy.cuda.get_current_stream().synchronize


def time_cuda(fn, x, iterations, repeats):
    import cupy
    fn(x)
    cupy.cuda.get_current_stream().synchronize()
    return statistics.median([timing.gpu_seconds(lambda: fn(x), iterations)
                              for _ in range(repeats)])


def time_host(fn, x, iterations, repeats, synchronize=None):
    fn(x)
    times = []
    for _ in range(repeats):
        if synchronize:
            synchronize()
        times.append(timing.wall_seconds(lambda: fn(x), iterations, synchronize))
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=cupycnn.DEVICES, default=None,
                        help="default: cupycnn's (CUPYCNN_DEVICE, else cuda where usable)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=None,
                        help="calls per timing (default: 50 on cuda, 3 on the CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.device:
        cupycnn.use(args.device)
    device = cupycnn.device()
    iterations = args.iterations or (50 if device == "cuda" else 3)
    host = np.random.default_rng(0).integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
    x = cupycnn.asarray(host)

    rows = {}
    for name, transform in ours().items():
        if device == "cuda":
            rows[name] = [time_cuda(transform, x, iterations, args.repeats)]
        else:
            rows[name] = [time_host(transform, x, iterations, args.repeats)]
    if device == "cuda":
        try:
            baseline_name, baseline, sync = torchvision_baseline()
        except ImportError:
            baseline_name, baseline, sync = cupy_baseline()
        for name, fn in baseline.items():
            rows[name].append(time_host(fn, x, max(1, iterations // 5), args.repeats, sync))
    elif device == "sim":
        baseline_name, baseline = "NumPy reference", numpy_reference()
        for name, fn in baseline.items():
            rows[name].append(time_host(fn, host, iterations, args.repeats))
    else:
        baseline_name = None

    ours_name = {"cuda": "cupycnn kernels (cuda)", "sim": "cupycnn kernels (sim)",
                 "numpy": "NumPy reference"}[device]
    print(f"# {args.batch} x 32 x 32 x 3 uint8 -> float32 NCHW; device {device}; images/s "
          f"(median of {args.repeats})")
    header = f"| transform | {ours_name} |" + (f" {baseline_name} | speed-up |"
                                                 if baseline_name else "")
    print(header)
    print("|" + " --- |" * header.count(" |"))
    for name, seconds in rows.items():
        line = f"| {name} | {args.batch / seconds[0]:,.0f} |"
        if len(seconds) > 1:
            line += f" {args.batch / seconds[1]:,.0f} | {seconds[1] / seconds[0]:.2f}x |"
        print(line)


if __name__ == "__main__":
    main()
