"""Streamed datasets on real photos (scikit-image's and scikit-learn's): the decoders, the
ImageNet transforms against torchvision's definitions (its formulas worked by hand and its
PIL operations), streamed folders and the ImageNet layouts against the whole-array decode of
the same files, worker processes (same batches as in-process, errors naming the file, a dead
worker reported, nothing left behind), and memory that does not grow with the dataset."""
import io
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from cupycnn.data import (BadImageError, ImageFolder, ImageNet, Loader, RandomResizedCrop,
                          Resize, ResizeCenterCrop, StreamingImageFolder, WorkerError)
from cupycnn.data import decode as D
from cupycnn.data.stream import StreamingImageFolder as _SIF
from test_data_folder import photo, put

JPEGS = ("china.jpg", "flower.jpg", "rocket.jpg")


def _jpeg_bytes(name):
    return photo(name).read_bytes()


@pytest.fixture
def photos(tmp_path):
    """Three classes of real photos (JPEG and PNG, one greyscale)."""
    root = tmp_path / "photos"
    put(root, "a/china.jpg", "china.jpg")
    put(root, "a/chelsea.png", "chelsea.png")
    put(root, "b/flower.jpg", "flower.jpg")
    put(root, "b/camera.png", "camera.png")
    put(root, "c/rocket.jpg", "rocket.jpg")
    put(root, "c/coffee.png", "coffee.png")
    return root


# ------------------------------------------------------------------------------ decoders

@pytest.mark.parametrize("name", JPEGS)
def test_simplejpeg_and_pillow_give_the_same_pixels(name):
    data = _jpeg_bytes(name)
    assert D.jpeg_decoder() == "simplejpeg"          # a dev dependency: the fast path is tested
    fast, pil = D.decode(data, name, decoder="simplejpeg"), D.decode(data, name, decoder="pillow")
    with Image.open(photo(name)) as image:
        reference = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(fast, reference)
    np.testing.assert_array_equal(pil, reference)
    assert D.image_size(data) == reference.shape[:2]


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
def test_decode_time_downscaling_keeps_at_least_the_size_asked(decoder):
    data = _jpeg_bytes("china.jpg")                        # 640 x 427
    assert D.decode(data, decoder=decoder, min_size=(200, 300)).shape == (214, 320, 3)
    assert D.decode(data, decoder=decoder, min_size=(100, 150)).shape == (107, 160, 3)
    assert D.decode(data, decoder=decoder, min_size=(300, 300)).shape == (427, 640, 3)  # < 2x


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
def test_a_corrupt_jpeg_is_an_error_naming_it(decoder):
    data = _jpeg_bytes("china.jpg")
    with pytest.raises(BadImageError, match="cannot read the image photos/x.jpg"):
        D.decode(data[:len(data) // 2], "photos/x.jpg", decoder=decoder)
    with pytest.raises(BadImageError, match="cannot read the image y.jpg"):
        D.decode(b"\xff\xd8\xff" + b"\0" * 100, "y.jpg", decoder=decoder)


# ---------------------------------------------------------- torchvision's transforms

def test_random_resized_crop_box_follows_torchvision_get_params():
    # 300 x 451 (h x w), area 135300. Attempt 0: scale 0.08 + 0.92 * 0.5 = 0.54, target area
    # 73062; aspect exp(log(3/4) + log(16/9) * 0.5) = 1 -> w = h = round(270.30) = 270: fits.
    # top = floor(0.25 * (300 - 270 + 1)) = 7, left = floor(0.75 * (451 - 270 + 1)) = 136.
    u = np.zeros((10, 4))
    u[0] = (0.5, 0.5, 0.25, 0.75)
    assert D.random_resized_crop_box(300, 451, u) == (7, 136, 270, 270)
    # Attempt 0 too big (scale 1, aspect 4/3: w = 520 > 451), attempt 1 fits: scale 0.08,
    # aspect 3/4: w = round(sqrt(10824 * 0.75)) = 90, h = round(sqrt(10824 / 0.75)) = 120.
    u[0], u[1] = (1 - 1e-9, 1 - 1e-9, 0, 0), (0.0, 0.0, 0.999, 0.0)
    assert D.random_resized_crop_box(300, 451, u) == (180, 0, 120, 90)
    # Nothing fits in 10 attempts: a 1000 x 100 strip (ratio 0.1 < 3/4) falls back to the
    # centre crop w = 100, h = round(100 / 0.75) = 133, at ((1000 - 133) // 2, 0).
    never = np.tile([1 - 1e-9, 1 - 1e-9, 0, 0], (10, 1))
    assert D.random_resized_crop_box(1000, 100, never) == (433, 0, 133, 100)
    assert D.random_resized_crop_box(100, 1000, never) == (0, 433, 100, 133)


def test_the_scalar_philox_is_the_reference_philox():
    from cupycnn.reference.philox import philox4x32_10
    t = RandomResizedCrop(224, seed=2 ** 40 + 12345)
    for draw, epoch in ((0, 0), (7, 3), (2 ** 33 + 5, 1)):
        u = t.uniforms(draw, epoch)                   # the vectorised reference
        rows = np.array([t._row(draw, epoch, a) for a in range(D.ATTEMPTS + 1)])
        np.testing.assert_array_equal(u, rows)
        box, flip = t.params(375, 500, draw, epoch)
        assert box == D.random_resized_crop_box(375, 500, u[:D.ATTEMPTS])
        assert flip == bool(u[D.ATTEMPTS, 0] < 0.5)
    words = philox4x32_10(np.array([1, 2, 3, 4], np.uint32), np.array([5, 6], np.uint32))
    assert tuple(int(w) for w in words) == D.philox_scalar((1, 2, 3, 4), (5, 6))


def test_random_resized_crop_draws_the_documented_distribution():
    t = RandomResizedCrop(224, seed=5)
    boxes, flips = zip(*(t.params(375, 500, draw, 0) for draw in range(1500)))
    areas = np.array([h * w for _, _, h, w in boxes]) / (375 * 500)
    aspects = np.array([w / h for _, _, h, w in boxes])
    assert areas.min() >= 0.075 and areas.max() <= 1.0
    assert aspects.min() > 0.73 and aspects.max() < 1.37
    # torchvision's get_params, line by line, on Python's generator: the same distribution.
    rng = np.random.default_rng(0)
    ref_areas, ref_aspects = [], []
    for _ in range(1500):
        for _ in range(10):
            target = 375 * 500 * rng.uniform(0.08, 1.0)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
            if 0 < w <= 500 and 0 < h <= 375:
                break
        else:
            w, h = 500, 375
        ref_areas.append(h * w / (375 * 500))
        ref_aspects.append(w / h)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(np.quantile(areas, q) - np.quantile(ref_areas, q)) < 0.04, q
        assert abs(np.quantile(aspects, q) - np.quantile(ref_aspects, q)) < 0.04, q
    assert 0.45 < np.mean(flips) < 0.55
    for top, left, h, w in boxes:
        assert 0 <= top <= 375 - h and 0 <= left <= 500 - w
    # The same (seed, draw, epoch) gives the same crop; another epoch or seed another.
    assert t.params(375, 500, 7, 0) == RandomResizedCrop(224, seed=5).params(375, 500, 7, 0)
    assert t.params(375, 500, 7, 1) != t.params(375, 500, 7, 0)
    assert RandomResizedCrop(224, seed=6).params(375, 500, 7, 0) != t.params(375, 500, 7, 0)


@pytest.mark.parametrize("name", ["china.jpg", "chelsea.png", "camera.png"])
def test_random_resized_crop_pixels_are_torchvisions_pil_ops(name):
    # torchvision's F.resized_crop on a PIL image is img.crop((left, top, left + w, top + h))
    # then img.resize((224, 224), BILINEAR); hflip is transpose(FLIP_LEFT_RIGHT).
    data = photo(name).read_bytes()
    with Image.open(photo(name)) as image:
        pil = image.convert("RGB")
    t = RandomResizedCrop(64, seed=11, downscale=False)
    for draw in range(6):
        (top, left, h, w), flip = t.params(pil.size[1], pil.size[0], draw, 3)
        ref = pil.crop((left, top, left + w, top + h)).resize((64, 64), Image.BILINEAR)
        if flip:
            ref = ref.transpose(Image.FLIP_LEFT_RIGHT)
        np.testing.assert_array_equal(t(data, name, draw, 3), np.asarray(ref))


def test_resize_center_crop_is_torchvisions_eval_transform():
    # china.jpg 640 x 427: Resize(256) -> short side 256, long int(256 * 640 / 427) = 383;
    # CenterCrop(224): top int(round(16 / 2)) = 16, left int(round(159 / 2)) = 80 (79.5 -> 80).
    data = photo("china.jpg").read_bytes()
    with Image.open(photo("china.jpg")) as image:
        pil = image.convert("RGB")
    assert D.resize_shape(427, 640, 256) == (256, 383)
    assert D.center_crop_box(256, 383, (224, 224)) == (16, 80, 224, 224)
    ref = np.asarray(pil.resize((383, 256), Image.BILINEAR))[16:240, 80:304]
    np.testing.assert_array_equal(ResizeCenterCrop(256, 224, downscale=False)(data), ref)
    np.testing.assert_array_equal(ResizeCenterCrop(256, 224, downscale=True)(data), ref)  # < 2x


def test_downscaled_decoding_is_close_to_the_full_decode():
    # A 2560 x 1708 photo (china.jpg enlarged 4x) to 224: decoded at 1/4, then cropped.
    with Image.open(photo("china.jpg")) as image:
        big = image.convert("RGB").resize((2560, 1708), Image.BILINEAR)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=92)
    data = buffer.getvalue()
    for fast, exact in ((ResizeCenterCrop(256, 224), ResizeCenterCrop(256, 224, downscale=False)),
                        (RandomResizedCrop(224, seed=1), RandomResizedCrop(224, seed=1,
                                                                          downscale=False))):
        a, b = fast(data, "big", 4, 0).astype(int), exact(data, "big", 4, 0).astype(int)
        assert a.shape == b.shape == (224, 224, 3)
        assert np.abs(a - b).mean() < 3.0, np.abs(a - b).mean()


# ---------------------------------------------------------------- streamed folders

@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_folder_gives_the_pixels_of_the_whole_array_decode(photos, workers):
    whole = ImageFolder(photos, size=48, crop=True)
    ds = StreamingImageFolder(photos, ResizeCenterCrop(None, 48, downscale=False))
    assert ds.classes == whole.classes and len(ds) == len(whole) == 6
    assert ds.labels.tolist() == whole.labels.tolist()
    loader = Loader(ds, 4, shuffle=False, num_workers=workers)
    try:
        batches = list(loader)
    finally:
        loader.close()
    assert [len(y) for _, y in batches] == [4, 2]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), whole.images)
    assert np.concatenate([y for _, y in batches]).tolist() == whole.labels.tolist()
    np.testing.assert_array_equal(ds[2][0], whole.images[2])
    stretched = StreamingImageFolder(photos, Resize((24, 40), downscale=False))
    np.testing.assert_array_equal(np.stack([stretched[i][0] for i in range(6)]),
                                  ImageFolder(photos, size=(24, 40)).images)
    with pytest.raises(TypeError, match="streamed and has no `images` array"):
        ds.images


def test_spawned_workers_give_the_same_batches(photos):
    # Where fork is unavailable (or unwanted: worker_start_method="spawn"/"forkserver") the
    # dataset travels to the workers pickled: its flat file table, not images.
    ds = StreamingImageFolder(photos, RandomResizedCrop(24, seed=4))
    forked = Loader(ds, 4, shuffle=True, seed=2, num_workers=2)
    spawned = Loader(ds, 4, shuffle=True, seed=2, num_workers=2, worker_start_method="spawn")
    try:
        for (a, y), (b, z) in zip(forked, spawned):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(y, z)
    finally:
        forked.close()
        spawned.close()


def test_a_split_of_a_streamed_folder_streams_the_same_examples(photos):
    from cupycnn.data import train_val_split
    whole = ImageFolder(photos, size=24, crop=True)
    ds = StreamingImageFolder(photos, ResizeCenterCrop(None, 24, downscale=False))
    (train, val), (wtrain, wval) = train_val_split(ds, 0.5, 0), train_val_split(whole, 0.5, 0)
    assert type(val).__name__ == "StreamingSubset" and val.indices.tolist() == wval.indices.tolist()
    loader = Loader(val, 2, shuffle=False, num_workers=2)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in loader]), wval.images)
    loader.close()
    assert train.labels.tolist() == wtrain.labels.tolist()


def test_shuffled_streamed_batches_follow_the_loader_order(photos):
    whole = ImageFolder(photos, size=32, crop=True)
    ds = StreamingImageFolder(photos, ResizeCenterCrop(None, 32, downscale=False))
    loader = Loader(ds, 4, shuffle=True, seed=3, num_workers=2, rank=1, world_size=2)
    order = loader.indices(0)
    got = np.concatenate([x for x, _ in loader])
    loader.close()
    np.testing.assert_array_equal(got, whole.images[order])


def test_random_crops_repeat_whatever_the_workers_and_ranks(photos):
    ds = StreamingImageFolder(photos, RandomResizedCrop(32, seed=9))

    def epoch(workers, rank=0, world=1, e=0):
        loader = Loader(ds, 2, shuffle=True, seed=1, num_workers=workers, rank=rank,
                        world_size=world)
        loader.set_epoch(e)
        out = {int(i): x for i, x in zip(loader.indices(e), np.concatenate([x for x, _ in loader]))}
        loader.close()
        return out

    one = epoch(0)
    assert len(one) == 6
    two = epoch(2)
    split = {**epoch(2, 0, 2), **epoch(1, 1, 2)}   # draws are global positions: the same crops
    for i in one:
        np.testing.assert_array_equal(one[i], two[i])
        np.testing.assert_array_equal(one[i], split[i])
    other = epoch(2, e=1)
    assert any(not np.array_equal(one[i], other[i]) for i in one)


def test_imagenet_layouts(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    photos = ["china.jpg", "flower.jpg", "rocket.jpg"]
    root = tmp_path / "imagenet"
    for wnid, name in zip(wnids, photos):
        put(root, f"train/{wnid}/{wnid}_1.JPEG", name)
        put(root, f"train/{wnid}/{wnid}_2.JPEG", name)
    val = [("ILSVRC2012_val_00000001", 2), ("ILSVRC2012_val_00000002", 0),
           ("ILSVRC2012_val_00000003", 1)]
    for stem, label in val:
        put(root, f"val/{stem}.JPEG", photos[label])
    (root / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n" + "".join(
            f"{stem},{wnids[label]} 10 20 200 300 {wnids[label]} 1 2 3 4\n" for stem, label in val))
    (root / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
        "n01484850 great white shark\n", encoding="utf-8")
    train = ImageNet(root, "train", ResizeCenterCrop(None, 16, downscale=False))
    assert train.classes == wnids and train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert train.class_names[0] == "tench, Tinca tinca"
    v = ImageNet(root, "val", ResizeCenterCrop(None, 16, downscale=False))
    assert v.classes == wnids and v.labels.tolist() == [2, 0, 1]
    np.testing.assert_array_equal(v[1][0], train[0][0])         # the same photo, china.jpg
    # Caffe-style `FILE LABEL` lines, by index or by wnid, in a file given explicitly.
    (root / "LOC_val_solution.csv").unlink()
    (tmp_path / "val.txt").write_text("".join(f"{s}.JPEG {k}\n" for s, k in val), encoding="utf-8")
    assert ImageNet(root, "val", labels_file=tmp_path / "val.txt").labels.tolist() == [2, 0, 1]
    (tmp_path / "val.txt").write_text("".join(f"{s}.JPEG {wnids[k]}\n" for s, k in val))
    assert ImageNet(root, "val", labels_file=tmp_path / "val.txt").labels.tolist() == [2, 0, 1]
    with pytest.raises(FileNotFoundError, match="no labels file was found"):
        ImageNet(root, "val")
    (tmp_path / "val.txt").write_text(f"{val[0][0]}.JPEG 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="2 of the 3 images .* have no label"):
        ImageNet(root, "val", labels_file=tmp_path / "val.txt")
    # Kaggle's nesting: ILSVRC/Data/CLS-LOC/{train,val}; val in class folders works too.
    kaggle = tmp_path / "kaggle"
    for wnid, name in zip(wnids, photos):
        put(kaggle, f"ILSVRC/Data/CLS-LOC/train/{wnid}/a.JPEG", name)
        put(kaggle, f"ILSVRC/Data/CLS-LOC/val/{wnid}/b.JPEG", name)
    assert ImageNet(kaggle, "val").labels.tolist() == [0, 1, 2]
    with pytest.raises(FileNotFoundError, match="no val/ folder"):
        ImageNet(root / "train", "val")


# ---------------------------------------------------------------- workers: failures

def _with_corrupt(photos):
    data = photo("rocket.jpg").read_bytes()
    (photos / "c" / "broken.jpg").write_bytes(data[:len(data) // 3])     # truncated JPEG
    return photos / "c" / "broken.jpg"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_jpeg_in_a_worker_names_the_file_and_does_not_hang(photos, workers):
    broken = _with_corrupt(photos)
    ds = StreamingImageFolder(photos, ResizeCenterCrop(None, 32))
    loader = Loader(ds, 2, shuffle=False, num_workers=workers, worker_timeout=60)
    started = time.monotonic()
    with pytest.raises(BadImageError, match=f"cannot read the image {broken}"):
        for _ in loader:
            pass
    assert time.monotonic() - started < 30
    # The loader (and its workers) still work for the next epoch, skipping with a warning.
    skipping = Loader(ds, 2, shuffle=False, num_workers=workers, skip_bad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sizes = [len(y) for _, y in skipping]
    assert sum(sizes) == 6 and any(str(broken) in str(w.message) for w in caught)
    loader.close()
    skipping.close()


class _Killer(_SIF):
    """Its worker dies (as one killed for memory would) when it reads example 3."""

    def read(self, i):
        if i == 3 and os.getpid() != self.parent:
            os.kill(os.getpid(), 9)
        return super().read(i)


def test_a_dead_worker_is_reported_not_waited_for(photos):
    ds = _Killer(photos, ResizeCenterCrop(None, 16))
    ds.parent = os.getpid()
    loader = Loader(ds, 2, shuffle=False, num_workers=2)
    started = time.monotonic()
    with pytest.raises(WorkerError, match="killed by signal SIGKILL"):
        list(loader)
    assert time.monotonic() - started < 30
    loader.close()


def test_workers_stop_and_shared_memory_goes_with_close(photos):
    ds = StreamingImageFolder(photos, ResizeCenterCrop(None, 16))
    loader = Loader(ds, 2, shuffle=True, num_workers=2)
    next(iter(loader))                       # an epoch left early
    batches = list(loader)                   # the next one is whole
    assert sum(len(y) for _, y in batches) == 6
    pool = loader._host.pool
    name = pool.shm.name
    processes = list(pool.processes)
    loader.close()
    assert all(not p.is_alive() for p in processes)
    assert not os.path.exists(f"/dev/shm/{name}")


# ------------------------------------------------------------------------ flat memory

_MEMORY_PROBE = textwrap.dedent("""
    import json, os, resource, sys
    from pathlib import Path
    import numpy as np
    from cupycnn.data import Loader, ResizeCenterCrop, StreamingImageFolder
    root, n, size = Path(sys.argv[1]), int(sys.argv[2]), 96
    source = sorted((root / "src").glob("*.jpg"))
    tree = root / f"n{n}"
    for i in range(n):                      # hard links: n real files, no disk to speak of
        target = tree / f"c{i % 10}" / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source[i % len(source)], target)
    def rss_kib(pid="self"):
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    ds = StreamingImageFolder(tree, ResizeCenterCrop(None, size))
    loader = Loader(ds, 32, shuffle=True, num_workers=2)
    seen = 0
    for x, y in loader:
        seen += len(y)
    parent = rss_kib()                      # now, with the workers still up
    workers = sum(rss_kib(p.pid) for p in loader._host.pool.processes)
    loader.close()
    print(json.dumps({"seen": seen, "parent": parent, "workers": workers,
                      "parent_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "array_mb": n * size * size * 3 / 2**20}))
""")


def test_memory_stays_flat_whatever_the_number_of_images(tmp_path):
    (tmp_path / "src").mkdir()
    for k, name in enumerate(JPEGS):
        with Image.open(photo(name)) as image:
            image.convert("RGB").resize((128, 96)).save(tmp_path / "src" / f"{k}.jpg",
                                                        quality=85)
    results = {}
    for n in (200, 4000):
        out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(tmp_path), str(n)],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        results[n] = json.loads(out.stdout.strip().splitlines()[-1])
        assert results[n]["seen"] == n
    small, big = results[200], results[4000]
    grew = {k: (big[k] - small[k]) / 1024 for k in ("parent", "workers", "parent_peak")}
    # 20x the images: a whole-array dataset needs 100 MiB more (measured: ImageFolder's peak
    # grows by 200 MiB, the decoded list and the stacked array); the stream only by its file
    # list (40 bytes a file) and the allocator's noise (measured: +4 MiB parent, +6 MiB the two
    # workers together).
    assert big["array_mb"] - small["array_mb"] > 100
    assert grew["parent"] < 16 and grew["parent_peak"] < 16 and grew["workers"] < 16, results


def test_streamed_batches_reach_the_gpu_intact(photos, monkeypatch):
    # The cuda path (pinned ring, side stream, events) under tests/fake_cupy.py's adversarial
    # schedules: each batch copied out of the workers' shared memory arrives whole.
    import cupycnn
    import fake_cupy
    whole = ImageFolder(photos, size=16, crop=True)
    ds = StreamingImageFolder(photos, ResizeCenterCrop(None, 16, downscale=False))
    try:
        for seed, workers in ((0, 2), (1, 0), (2, 2), (3, 1)):
            fake_cupy.install(monkeypatch, *fake_cupy.make(seed))
            loader = Loader(ds, 4, shuffle=True, seed=seed, num_workers=workers, prefetch=True)
            assert cupycnn.device() == "cuda" and not loader.resident
            kept = list(loader)                   # nothing synchronised, as in training
            got = np.concatenate([x.get() for x, _ in kept])
            np.testing.assert_array_equal(got, whole.images[loader.indices(0)])
            assert np.concatenate([y.get() for _, y in kept]).tolist() == \
                whole.labels[loader.indices(0)].tolist()
            loader.close()
    finally:
        cupycnn.use("numpy")
