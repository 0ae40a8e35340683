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
jobs on a shared machine hits all of them alike). "Per core" is images per CPU-second: the CPU
time of the loading process and its workers (Linux /proc), which waiting for a busy core does
not inflate; wall-clock images/s are printed beside it:
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


def resnet50_activations():
    """(elements, tensors): every activation tensor of cupycnn's ResNet-50 at 224 x 224 per
    image, from Layer.summary's shapes: each convolution's and batchnorm's output, the stem's
    ReLU and pools, and in each bottleneck the ReLUs after its first two batchnorms (the sizes
    of those outputs), the residual sum and the ReLU after it (the block's output size)."""
    import cupycnn
    from cupycnn.models.resnet import Bottleneck, ResNet
    cupycnn.use("numpy")
    # The unfused layers: the count is of every tensor an unfused step moves (fused batchnorm
    # epilogues move fewer).
    model = ResNet(Bottleneck, (3, 4, 6, 3), num_classes=1000, fused=False)
    rows = model.summary((3, 224, 224), print_fn=lambda *a: None)
    sizes = {name: int(np.prod(shape)) for name, _, shape, _ in rows if shape is not None}
    elements = tensors = 0
    for name, kind, shape, _ in rows:
        if kind in ("Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D", "GlobalAvgPool2D", "Dense"):
            elements, tensors = elements + sizes[name], tensors + 1
        elif kind == "Bottleneck":
            elements += sizes[f"{name}.bn1"] + sizes[f"{name}.bn2"] + 2 * sizes[name]
            tensors += 4
    return elements, tensors


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


def _cpu_seconds(pid):
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker_pids(loader):
    if hasattr(loader, "_host"):                                     # cupycnn
        pool = getattr(loader._host, "pool", None)
        return [p.pid for p in pool.processes] if pool is not None else []
    iterator = getattr(loader, "_iterator", None)                    # torch, persistent
    return [w.pid for w in getattr(iterator, "_workers", [])]


def epoch_seconds(loader):
    """(wall seconds, CPU seconds of the process and its workers, images) of one epoch. CPU
    time is what makes "per core" meaningful on a shared machine: waiting for a core is not
    counted."""
    pids = _worker_pids(loader)
    cpu = time.process_time() + sum(_cpu_seconds(p) for p in pids)
    started = time.perf_counter()
    count = 0
    for images, labels in loader:
        count += len(labels)
    wall = time.perf_counter() - started
    pids = pids or _worker_pids(loader)
    return wall, time.process_time() + sum(_cpu_seconds(p) for p in pids) - cpu, count


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=384)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--folder", help="reuse this folder of photos (written if absent)")
    p.add_argument("--roofline-only", type=float, metavar="PER_CORE",
                   help="print only the roofline table, for this many images/s per core")
    args = p.parse_args(argv)
    if args.roofline_only:
        roofline(args.roofline_only)
        return 0
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
        cpus = {name: [] for name in loaders}
        for _ in range(args.repeats):
            names = list(loaders)
            random.shuffle(names)
            for name in names:
                seconds, cpu, n = epoch_seconds(loaders[name])
                assert n == count, (name, n)
                times[name].append(n / seconds)
                cpus[name].append(n / cpu)
        base = {"train": np.median(cpus["torchvision train"]),
                "eval": np.median(cpus["torchvision eval"])}
        for name, rates in times.items():
            per_cpu = float(np.median(cpus[name]))
            rows.append((workers, name, float(np.median(rates)), per_cpu,
                         per_cpu / base[name.split()[-1]], min(rates), max(rates)))
        for loader in loaders.values():
            if hasattr(loader, "close"):
                loader.close()
        del loaders
    print(f"\n(load average {os.getloadavg()[0]:.1f} at the end)\n")
    print("| workers | pipeline | images per CPU-second (per core) | vs torchvision | "
          "images/s, wall | wall range |")
    print("| --- | --- | --- | --- | --- | --- |")
    for workers, name, median, per, ratio, lo, hi in rows:
        print(f"| {workers} | {name} | {per:.0f} | {ratio:.2f}x | {median:.0f} | "
              f"{lo:.0f}-{hi:.0f} |")
    per_core = max(per for workers, name, _, per, *_ in rows if name == "cupycnn train")
    roofline(per_core)
    return 0


def roofline(per_core):
    """The images/s a ResNet-50 training step can reach on an H200 at each precision (the
    lower of its compute and memory bounds), and the decoding cores that would feed it."""
    elements, leaves = resnet50_activations()
    print(f"\nResNet-50 at 224x224, per training image: {RESNET50_TRAIN_FLOP / 1e9:.1f} GFLOP "
          f"(3x the forward's 8.2); {elements / 1e6:.1f} M activation elements in {leaves} "
          f"tensors (convolutions, batchnorms, ReLUs, residual sums, pools), each written and "
          f"read once forward-and-backward and its gradient written and read once: 4 passes.")
    print("| precision | peak (H200 datasheet) | compute bound, images/s | activation bytes "
          "per image | memory bound at 4.8 TB/s, images/s | bound | decoding cores at "
          f"{per_core:.0f}/s each |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for precision, size in (("fp32", 4), ("tf32", 4), ("bf16", 2)):
        compute = H200[precision] / RESNET50_TRAIN_FLOP
        traffic = 4 * elements * size
        memory = H200["bandwidth"] / traffic
        bound = min(compute, memory)
        print(f"| {precision} | {H200[precision] / 1e12:.0f} TFLOP/s | {compute:,.0f} | "
              f"{traffic / 1e6:.0f} MB | {memory:,.0f} | {bound:,.0f} | "
              f"{math.ceil(bound / per_core)} |")
    print(f"(per core: cupycnn train's images per CPU-second above, the better of 1 and 2 "
          f"workers)")


if __name__ == "__main__":
    raise SystemExit(main())
