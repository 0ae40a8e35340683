"""Decode-and-augment throughput: cupycnn's streamed ImageFolder + Loader workers against
torchvision's ImageFolder + DataLoader with the same transforms and the same number of worker
processes, on real photos re-encoded at ImageNet's sizes; then what a ResNet-50 step needs.

    # torchvision cannot be imported beside the project's CPU torch wheel: a venv of its own
    python3 -m venv /work/tv-venv
    /work/tv-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy Pillow simplejpeg \
        h5py scikit-image
    /work/tv-venv/bin/python benchmarks/data_pipeline.py --images 384 --repeats 5

The photos: scikit-image's colour photographs (skimage.data: astronaut, chelsea, coffee,
rocket, ...), each cut and resized to an ImageNet-like size (long side 500, short side 333 or
375, a fifth of them portrait; ImageNet's training images average about 400 x 350) and saved
as JPEG quality 95 in 10 class folders. Every candidate reads the same files.

Candidates (each timed over whole epochs with its workers already started, interleaved: every
repeat runs every candidate once, in a fresh random order; medians reported, so load from other
jobs on a shared machine hits all of them alike):
  cupycnn          StreamingImageFolder(RandomResizedCrop(224)) + Loader(num_workers=w): uint8
                   [B, 224, 224, 3] batches (normalisation happens on the device); JPEGs
                   decoded by simplejpeg with decode-time downscaling
  cupycnn-pillow   the same with decoder="pillow" (what a machine without simplejpeg gets)
  torchvision      ImageFolder(Compose([RandomResizedCrop(224), RandomHorizontalFlip(),
                   PILToTensor()])) + DataLoader(num_workers=w, persistent_workers=True):
                   uint8 [B, 3, 224, 224], the same work
  torchvision-f32  ... with ToTensor() + Normalize(mean, std) instead of PILToTensor(): the
                   common recipe, float32 batches normalised on the host
and the evaluation transforms (Resize(256) + CenterCrop(224)) for cupycnn and torchvision.
Before timing, the script checks that cupycnn's crop for a given box and flip is
torchvision's F.resized_crop pixel for pixel (downscale=False, the same Pillow).
"""
import argparse
import io
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# H200 SXM figures from the device notes (datasheet/H200.md: NVIDIA's datasheet values, leads
# until measured): dense matrix throughput and HBM3e bandwidth.
H200 = {"fp32": 67e12, "tf32": 495e12, "bf16": 990e12, "bandwidth": 4.8e12}
# ResNet-50 at 224 x 224: 4.09 G multiply-adds forward (He et al. 2016, table 1: 3.8e9 for the
# convolutions + the head; torchvision's own count 4.09 GMACs) = 8.2 GFLOP; a training step is
# forward + backward (input and weight gradients) = 3x forward.
RESNET50_TRAIN_FLOP = 3 * 2 * 4.09e9


def photos():
    import skimage.data as sd
    names = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field",
             "immunohistochemistry", "retina", "cat", "colorwheel"]
    out = []
    for name in names:
        try:
            image = getattr(sd, name)()
        except Exception:            # some need pooch downloads in old versions; skip those
            continue
        if image.ndim == 3 and image.shape[2] >= 3 and min(image.shape[:2]) >= 300:
            out.append(np.ascontiguousarray(image[..., :3]))
    return out


def write_folder(root, count, seed=0):
    """`count` JPEGs at ImageNet-like sizes in root/class{0..9}/."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    sources = photos()
    total = 0
    for i in range(count):
        src = sources[i % len(sources)]
        short = int(rng.choice([333, 375]))
        size = (500, short) if rng.random() > 0.2 else (short, 500)     # (w, h)
        h, w = src.shape[:2]
        aspect = size[0] / size[1]
        ch = min(h, int(w / aspect))
        cw = int(ch * aspect)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(src[top:top + ch, left:left + cw]).resize(size, Image.BILINEAR)
        path = Path(root) / f"class{i % 10}" / f"{i:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path, "JPEG", quality=95)
        total += path.stat().st_size
    return total / count


def check_same_pixels(root):
    """cupycnn's RandomResizedCrop (downscale off) against torchvision's F.resized_crop."""
    import torchvision.transforms as T
    import torchvision.transforms.functional as F
    from PIL import Image
    from cupycnn.data import RandomResizedCrop, ResizeCenterCrop
    files = sorted(Path(root).rglob("*.JPEG"))[:8]
    ours = RandomResizedCrop(224, seed=1, downscale=False)
    for draw, path in enumerate(files):
        data = path.read_bytes()
        pil = Image.open(io.BytesIO(data)).convert("RGB")
        (top, left, h, w), flip = ours.params(pil.size[1], pil.size[0], draw, 0)
        ref = F.resized_crop(pil, top, left, h, w, [224, 224], T.InterpolationMode.BILINEAR,
                             antialias=True)
        if flip:
            ref = F.hflip(ref)
        assert np.array_equal(ours(data, str(path), draw, 0), np.asarray(ref)), path
        ev = T.Compose([T.Resize(256), T.CenterCrop(224)])(pil)
        assert np.array_equal(ResizeCenterCrop(256, 224, downscale=False)(data), np.asarray(ev))
    return len(files)


def candidates(root, batch, workers):
    import torch
    import torchvision
    import torchvision.transforms as T
    from cupycnn.data import Loader, RandomResizedCrop, ResizeCenterCrop, StreamingImageFolder

    def ours(transform):
        ds = StreamingImageFolder(root, transform)
        return Loader(ds, batch, shuffle=True, num_workers=workers, prefetch=False)

    def tv(transform):
        ds = torchvision.datasets.ImageFolder(root, transform)
        return torch.utils.data.DataLoader(ds, batch, shuffle=True, num_workers=workers,
                                           persistent_workers=True, prefetch_factor=2)

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    flip = T.RandomHorizontalFlip()
    return {
        "cupycnn train": ours(RandomResizedCrop(224, seed=0)),
        "cupycnn-pillow train": ours(RandomResizedCrop(224, seed=0, decoder="pillow")),
        "torchvision train": tv(T.Compose([T.RandomResizedCrop(224), flip, T.PILToTensor()])),
        "torchvision-f32 train": tv(T.Compose([T.RandomResizedCrop(224), flip, T.ToTensor(),
                                               T.Normalize(mean, std)])),
        "cupycnn eval": ours(ResizeCenterCrop(256, 224)),
        "torchvision eval": tv(T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])),
    }


def epoch_seconds(loader):
    started = time.perf_counter()
    count = 0
    for images, labels in loader:
        count += len(labels)
    return time.perf_counter() - started, count


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=384)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--folder", help="reuse this folder of photos (written if absent)")
    args = p.parse_args(argv)
    import torch
    import torchvision
    from cupycnn.data.decode import jpeg_decoder
    torch.set_num_threads(1)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="cupycnn-bench-"))
    if not any(folder.rglob("*.JPEG")):
        mean_bytes = write_folder(folder, args.images)
    else:
        files = list(folder.rglob("*.JPEG"))
        mean_bytes = sum(f.stat().st_size for f in files) / len(files)
    count = len(list(folder.rglob("*.JPEG")))
    print(f"{count} JPEGs in {folder}, {mean_bytes / 1e3:.0f} kB on average; torch "
          f"{torch.__version__}, torchvision {torchvision.__version__}; cupycnn decodes JPEGs "
          f"with {jpeg_decoder()}; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    print(f"pixels: cupycnn's crops equal torchvision's F.resized_crop and Resize+CenterCrop on "
          f"{check_same_pixels(folder)} images")
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        loaders = candidates(str(folder), args.batch, workers)
        for loader in loaders.values():                         # start workers, warm caches
            epoch_seconds(loader)
        times = {name: [] for name in loaders}
        for _ in range(args.repeats):
            names = list(loaders)
            random.shuffle(names)
            for name in names:
                seconds, n = epoch_seconds(loaders[name])
                assert n == count, (name, n)
                times[name].append(n / seconds)
        base = {"train": np.median(times["torchvision train"]),
                "eval": np.median(times["torchvision eval"])}
        for name, rates in times.items():
            median = float(np.median(rates))
            rows.append((workers, name, median, median / workers, median / base[name.split()[-1]],
                         min(rates), max(rates)))
        for loader in loaders.values():
            if hasattr(loader, "close"):
                loader.close()
        del loaders
    print(f"\n(load average {os.getloadavg()[0]:.1f} at the end)\n")
    print("| workers | pipeline | images/s | images/s per worker | vs torchvision | range |")
    print("| --- | --- | --- | --- | --- | --- |")
    for workers, name, median, per, ratio, lo, hi in rows:
        print(f"| {workers} | {name} | {median:.0f} | {per:.0f} | {ratio:.2f}x | "
              f"{lo:.0f}-{hi:.0f} |")
    per_core = max(per for workers, name, _, per, *_ in rows if name == "cupycnn train")
    print(f"\nResNet-50 at 224x224: {RESNET50_TRAIN_FLOP / 1e9:.1f} GFLOP per training image.")
    print("| precision | H200 dense peak (datasheet) | images/s at peak | at 40% of peak | "
          "cores at the measured rate, at 40% |")
    print("| --- | --- | --- | --- | --- |")
    for precision in ("fp32", "tf32", "bf16"):
        peak = H200[precision] / RESNET50_TRAIN_FLOP
        print(f"| {precision} | {H200[precision] / 1e12:.0f} TFLOP/s | {peak:,.0f} | "
              f"{0.4 * peak:,.0f} | {math.ceil(0.4 * peak / per_core)} |")
    print(f"(measured: {per_core:.0f} images/s per decoding core, cupycnn train, best of 1 and "
          f"2 workers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
