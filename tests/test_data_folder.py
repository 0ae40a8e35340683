"""ImageFolder on real photos (the JPEGs and PNGs scikit-image and scikit-learn ship), the
Kaggle repeated-folder layout, unreadable files, resizing as torchvision does, and the HDF5
cache: round trip, atomic writes, mismatches."""
import os
import shutil
import warnings
import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from cupycnn.data import (BadImageError, CacheMismatchError, HDF5Dataset, ImageFolder,
                          train_val_split)
from cupycnn.data import folder as folder_module

PHOTOS = {  # name -> (package, folder in it); sizes (width x height) for the geometry below
    "chelsea.png": ("skimage", "data"),                  # 451 x 300, RGB
    "coffee.png": ("skimage", "data"),                   # 600 x 400, RGB
    "camera.png": ("skimage", "data"),                   # 512 x 512, greyscale
    "rocket.jpg": ("skimage", "data"),                   # 640 x 427
    "china.jpg": ("sklearn", "datasets/images"),         # 640 x 427
    "flower.jpg": ("sklearn", "datasets/images"),        # 640 x 427
}


def photo(name):
    # Found without importing the packages (importing sklearn.datasets takes seconds).
    package, folder = PHOTOS[name]
    path = Path(importlib.util.find_spec(package).submodule_search_locations[0]) / folder / name
    assert path.is_file(), f"{package} no longer ships {folder}/{name}"
    return path


def put(root, relative, name):
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(photo(name), target)
    return target


@pytest.fixture
def tree(tmp_path):
    """Three classes of real photos: upper-case extensions, a nested folder, a greyscale PNG,
    and files that are not images (ignored)."""
    root = tmp_path / "photos"
    put(root, "cat/chelsea.png", "chelsea.png")
    put(root, "cat/chelsea_copy.PNG", "chelsea.png")
    put(root, "flower/flower.jpg", "flower.jpg")
    put(root, "flower/nested/flower2.JPEG", "flower.jpg")
    for name in ("camera.png", "china.jpg", "coffee.png", "rocket.jpg"):
        put(root, f"scene/{name}", name)
    (root / "scene" / "notes.txt").write_text("not an image", encoding="utf-8")
    (root / "scene" / ".DS_Store").write_bytes(b"\0\1")
    put(root, ".thumbnails/x.jpg", "china.jpg")            # a hidden folder is not a class
    return root


def _decode(path):
    with Image.open(path) as image:
        return image.convert("RGB")


def test_classes_labels_files_and_rgb(tree):
    ds = ImageFolder(tree, size=32, crop=True)
    assert ds.classes == ["cat", "flower", "scene"]
    assert ds.class_to_idx == {"cat": 0, "flower": 1, "scene": 2}
    assert [p.relative_to(tree).as_posix() for p in ds.files] == [
        "cat/chelsea.png", "cat/chelsea_copy.PNG", "flower/flower.jpg",
        "flower/nested/flower2.JPEG", "scene/camera.png", "scene/china.jpg", "scene/coffee.png",
        "scene/rocket.jpg"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2, 2, 2] and ds.labels.dtype == np.int64
    assert ds.images.shape == (8, 32, 32, 3) and ds.images.dtype == np.uint8
    assert len(ds) == 8 and ds.skipped == []
    grey = ds.images[4].astype(int)                        # camera.png, converted to RGB
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert grey.std() > 10                                 # a real photo, not a blank
    np.testing.assert_array_equal(ds.images[0], ds.images[1])
    image, label = ds[3]
    np.testing.assert_array_equal(image, ds.images[3])
    assert label == 1


# torchvision's Resize(s) + CenterCrop(s) geometry, worked out by hand for these photos:
# short side -> s, long side -> int(s * long / short), corner at int(round((new - s) / 2)).
#   china.jpg 640x427, s=32: resize to 47x32 (w x h), crop x 8..40 (round(7.5) = 8)
#   chelsea.png 451x300, s=32: resize to 48x32, crop x 8..40
#   camera.png 512x512, s=32: resize to 32x32, no crop
# and for a (h, w) = (24, 40) target, china covers it at width 40: 40x26, crop y 1..25.
@pytest.mark.parametrize("name, size, resized, box", [
    ("china.jpg", 32, (47, 32), (8, 0, 40, 32)),
    ("chelsea.png", 32, (48, 32), (8, 0, 40, 32)),
    ("camera.png", 32, (32, 32), (0, 0, 32, 32)),
    ("china.jpg", (24, 40), (40, 26), (0, 1, 40, 25)),
])
def test_crop_is_torchvision_resize_then_center_crop(tmp_path, name, size, resized, box):
    put(tmp_path / "root", f"only/{name}", name)
    ds = ImageFolder(tmp_path / "root", size=size, crop=True)
    expected = np.asarray(_decode(photo(name)).resize(resized, Image.BILINEAR).crop(box))
    np.testing.assert_array_equal(ds.images[0], expected)


def test_without_crop_the_image_is_stretched_to_the_size(tmp_path):
    put(tmp_path / "root", "only/china.jpg", "china.jpg")
    ds = ImageFolder(tmp_path / "root", size=(24, 40))
    assert ds.images.shape == (1, 24, 40, 3)
    expected = np.asarray(_decode(photo("china.jpg")).resize((40, 24), Image.BILINEAR))
    np.testing.assert_array_equal(ds.images[0], expected)


def test_original_size_when_all_equal_else_a_clear_error(tmp_path, tree):
    same = tmp_path / "same"
    put(same, "a/china.jpg", "china.jpg")
    put(same, "b/flower.jpg", "flower.jpg")
    ds = ImageFolder(same)
    assert ds.images.shape == (2, 427, 640, 3)
    np.testing.assert_array_equal(ds.images[1], np.asarray(_decode(photo("flower.jpg"))))
    with pytest.raises(ValueError, match=r"the images differ in size \(.*chelsea.png is "
                                         r"300x451, .*flower.jpg is 427x640\); pass size="):
        ImageFolder(tree)


def test_kaggle_repeated_top_folder(tmp_path):
    top = tmp_path / "Training Data"
    put(top, "Training Data/Zebra/Zebra-Train (1).jpeg", "china.jpg")
    put(top, "Training Data/Zebra/Zebra-Train (2).jpeg", "flower.jpg")
    put(top, "Training Data/Horse/Horse-Train (1).jpeg", "rocket.jpg")
    ds = ImageFolder(top, size=16, crop=True)
    assert ds.root == (top / "Training Data").resolve()
    assert ds.classes == ["Horse", "Zebra"] and ds.labels.tolist() == [0, 1, 1]
    assert ds.files[1].name == "Zebra-Train (1).jpeg"
    # A lone folder of another name is a class, as in torchvision: nothing is guessed.
    other = tmp_path / "other"
    put(other, "train/Zebra/z.jpg", "china.jpg")
    assert ImageFolder(other, size=8).classes == ["train"]


def _write_corrupt(root):
    truncated = root / "cat" / "truncated.jpg"
    data = photo("china.jpg").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    garbage = root / "scene" / "garbage.png"
    garbage.write_bytes(b"this is not a PNG at all\n" * 20)
    return truncated, garbage


def test_unreadable_image_is_an_error_naming_the_file(tree):
    truncated, garbage = _write_corrupt(tree)
    with pytest.raises(BadImageError) as info:
        ImageFolder(tree, size=16, crop=True)
    message = str(info.value)
    assert message.startswith("ImageFolder: cannot read the image ")
    assert str(truncated) in message or str(garbage) in message


def test_skip_bad_skips_with_one_warning_per_file(tree):
    truncated, garbage = _write_corrupt(tree)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolder(tree, size=16, crop=True, skip_bad=True)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert str(truncated) in messages[0] and str(garbage) in messages[1]
    assert "truncated" in messages[0]
    assert [p for p, _ in ds.skipped] == [truncated, garbage]
    assert len(ds) == 8 and ds.labels.tolist() == [0, 0, 1, 1, 2, 2, 2, 2]
    assert truncated not in ds.files and garbage not in ds.files


def test_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        ImageFolder(tmp_path / "missing")
    flat = tmp_path / "flat"
    put(flat, "china.jpg", "china.jpg")
    with pytest.raises(FileNotFoundError, match=r"has no class folders; expected .*<class name>"):
        ImageFolder(flat)
    put(flat, "full/china.jpg", "china.jpg")
    (flat / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no .jpg, .jpeg or .png images in the class "
                                                r"folder\(s\) 'empty'"):
        ImageFolder(flat)
    with pytest.raises(ValueError, match=r"size must be a positive int or \(height, width\)"):
        ImageFolder(flat, size=(0, 3))


def test_hdf5_round_trip(tree, tmp_path):
    ds = ImageFolder(tree, size=(20, 28), crop=True)
    path = ds.to_hdf5(tmp_path / "cache" / "photos.h5")
    cache = HDF5Dataset(path)
    np.testing.assert_array_equal(cache.images, ds.images)
    np.testing.assert_array_equal(cache.labels, ds.labels)
    assert cache.images.dtype == np.uint8 and cache.labels.dtype == np.int64
    assert cache.classes == ds.classes
    assert cache.files == [p.relative_to(ds.root).as_posix() for p in ds.files]
    assert cache.attrs["size"] == [20, 28] and cache.attrs["crop"]
    assert cache.attrs["source"] == str(ds.root)
    with h5py.File(path) as f:                         # the layout docs/data.md describes
        assert f["images"].shape == (8, 20, 28, 3) and f["images"].dtype == np.uint8
        assert f["labels"].dtype == np.int64
        assert f.attrs["format"].decode() == folder_module.HDF5_FORMAT
    assert sorted(p.name for p in path.parent.iterdir()) == ["photos.h5"]   # no temporaries
    train, val = train_val_split(cache, 0.25, seed=0)
    assert len(train) == 6 and len(val) == 2


def test_hdf5_write_is_atomic(tree, tmp_path, monkeypatch):
    ds = ImageFolder(tree, size=16, crop=True)
    path = tmp_path / "photos.h5"
    ds.to_hdf5(path)
    before = path.read_bytes()
    opened = []
    real_file = h5py.File

    def failing_file(name, mode="r", *args, **kwargs):
        handle = real_file(name, mode, *args, **kwargs)
        if mode == "w":
            opened.append(Path(name))
            real_create = handle.create_dataset

            def create_dataset(key, *a, **k):
                if key == "labels":                      # the images already written
                    raise OSError("disk full (simulated)")
                return real_create(key, *a, **k)
            handle.create_dataset = create_dataset
        return handle

    monkeypatch.setattr(h5py, "File", failing_file)
    with pytest.raises(OSError, match=r"cannot write the image cache .*photos.h5: disk full "
                                      r"\(simulated\) \(the previous file is kept\)"):
        ImageFolder(tree, size=32, crop=True).to_hdf5(path)
    monkeypatch.undo()
    assert opened and opened[0].parent == path.parent and opened[0] != path
    assert opened[0].name.startswith(".photos.h5.") and opened[0].name.endswith(".partial")
    assert path.read_bytes() == before                    # the old cache, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "photos.h5"]
    assert HDF5Dataset(path).image_shape == (16, 16, 3)


def test_hdf5_mismatch_is_reported(tree, tmp_path):
    path = ImageFolder(tree, size=16, crop=True).to_hdf5(tmp_path / "photos.h5")
    assert len(HDF5Dataset(path, size=16, classes=["cat", "flower", "scene"])) == 8
    with pytest.raises(CacheMismatchError, match=r"holds 16x16 images, asked for 32x24; "
                                                 r"delete it, or rebuild it"):
        HDF5Dataset(path, size=(32, 24))
    with pytest.raises(CacheMismatchError, match=r"holds the classes \['cat', 'flower', "
                                                 r"'scene'\], asked for \['cat', 'dog'\]"):
        HDF5Dataset(path, classes=["cat", "dog"])
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="is not a cupycnn.data cache"):
        HDF5Dataset(other)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="is not a cupycnn.data cache"):
        HDF5Dataset(tmp_path / "junk.h5")


def test_cached_builds_reuses_and_rebuilds(tree, tmp_path, capfd):
    path = tmp_path / "cache.h5"
    first = ImageFolder.cached(tree, path, size=16, crop=True)
    assert "writing the cache" in capfd.readouterr().err
    stamp = os.stat(path).st_mtime_ns
    again = ImageFolder.cached(tree, path, size=16, crop=True)
    assert capfd.readouterr().err == "" and os.stat(path).st_mtime_ns == stamp
    np.testing.assert_array_equal(again.images, first.images)

    resized = ImageFolder.cached(tree, path, size=24, crop=True)
    assert "was made with size=(16, 16), asked for (24, 24)" in capfd.readouterr().err
    assert resized.image_shape == (24, 24, 3)
    ImageFolder.cached(tree, path, size=24, crop=False)
    assert "crop=True, asked for False" in capfd.readouterr().err

    put(tree, "scene/extra.jpg", "rocket.jpg")
    grown = ImageFolder.cached(tree, path, size=24)
    assert "image files under" in capfd.readouterr().err and len(grown) == 9
    put(tree, "dog/d.jpg", "china.jpg")
    more = ImageFolder.cached(tree, path, size=24)
    assert "differ from the folder's ['cat', 'dog', 'flower', 'scene']" in capfd.readouterr().err
    assert more.classes == ["cat", "dog", "flower", "scene"] and len(more) == 10


def test_split_folders_finds_a_datasets_own_train_and_test_splits(tmp_path):
    (tmp_path / "Training Data").mkdir()
    (tmp_path / "Testing Data").mkdir()
    (tmp_path / "notes").mkdir()
    assert folder_module.split_folders(tmp_path) == (tmp_path / "Training Data",
                                                     tmp_path / "Testing Data")
    other = tmp_path / "other"
    (other / "TRAIN").mkdir(parents=True)
    assert folder_module.split_folders(other) == (other / "TRAIN", None)            # no test split
    (other / "val").mkdir()
    assert folder_module.split_folders(other) == (other / "TRAIN", other / "val")
    assert folder_module.split_folders(tmp_path / "missing") == (None, None)
