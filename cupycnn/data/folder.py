"""Images in class folders (torchvision's ImageFolder layout), and their HDF5 cache.

    root/
        cat/ 001.jpg  002.png ...
        dog/ 001.jpeg ...

Each sub-folder of `root` is a class, the classes sorted by name; every .jpg, .jpeg and .png
(any letter case) under a class folder, at any depth, is an image of that class. Archives from
Kaggle often repeat their top folder (`Training Data/Training Data/Zebra/...`): a root whose only
entry is a folder of the same name holding the class folders is looked through.

Images are decoded with Pillow, converted to RGB (as torchvision's default loader does), and
resized to `size`: to exactly (h, w), or with `crop=True` by torchvision's
`Resize(size) + CenterCrop(size)` (scale so the image covers (h, w), the short side to its target
and the other to int(target * long / short), bilinear as Pillow does it, then cut the centre,
its corner at int(round((new - target) / 2))).

Decoding a folder of photos takes a while, so `ImageFolder.to_hdf5(path)` writes the decoded
images once to an HDF5 file that `HDF5Dataset(path)` loads in a single read.
`ImageFolder.cached(root, path, ...)` does both: it loads the cache when it matches what is
asked (image size, crop, the folder's classes and files) and rebuilds it, saying why, when not.

HDF5 layout (format "cupycnn.data.hdf5/2"): a verified file (cupycnn.safe_hdf5, as
checkpoints are): a header in the HDF5 userblock, with the SHA-256 of the whole file, then
    images   uint8 [N, H, W, C]
    labels   int64 [N]
and the header's document: {"format", "classes" (the class names, label k's at position k),
"files" (each image's source relative to the root, or null), "attrs" (size: [h, w] or [] for
the images' own size, crop, source, fingerprint)}. Names that are not valid UTF-8 are kept
exactly (as Python's os.fsdecode gives them). Loading checks the digests before HDF5 parses a
byte, then audits the file (no links to other files, no external storage, nothing declared
and not stored), then checks every name, shape and dtype before reading the images. A cache
that is damaged, of another version or hostile is a ValueError saying so; ImageFolder.cached
rebuilds it.

Files are written to a temporary file beside the target and renamed into place
(cupycnn.atomic), so a reader never sees a half-written cache and a failed write leaves the
old one as it was.

Only regular files are images (a FIFO named x.jpg would block the decoder forever; a dangling
symlink cannot be read): anything else is an unreadable image, an error naming it (or skipped
with skip_bad). Folders reached again through a symbolic link (a loop back to a parent) are
not walked twice: a warning names them.
"""
import hashlib
import os
import stat
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .. import atomic, safe_hdf5
from ._optional import require
from .base import ArrayDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
HDF5_FORMAT = "cupycnn.data.hdf5/2"
CACHE_MAGIC, CACHE_VERSION = "cupycnn-cache", 2
MAX_CLASSES = 1_000_000
DECODE_THREADS = min(8, os.cpu_count() or 1)     # Pillow decodes with the GIL released


class BadImageError(ValueError):
    """An image file could not be decoded."""


class CacheMismatchError(ValueError):
    """An HDF5 cache holds something other than what was asked for."""


def _pillow():
    return require("PIL.Image", "Pillow", "cupycnn.data.ImageFolder")


def _hidden(name):
    return name.startswith(".") or name == "__MACOSX"


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _size_pair(size):
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"ImageFolder: size must be a positive int or (height, width), got "
                         f"{size}")
    return size


def class_root(root):
    """`root`, or the folder it wraps when archived with a repeated top folder (Kaggle's
    `Training Data/Training Data/<class>/`): while a folder's only entry is a folder of the same
    name (any letter case) that itself holds folders, look inside it."""
    root = Path(root).expanduser().resolve()
    while True:
        entries = [e for e in root.iterdir() if not _hidden(e.name)]
        if not (len(entries) == 1 and entries[0].is_dir()
                and entries[0].name.casefold() == root.name.casefold()):
            return root
        inner = entries[0]
        if not any(e.is_dir() and not _hidden(e.name) for e in inner.iterdir()):
            return root
        root = inner


# Sub-folders that hold a dataset's own train and test splits (Kaggle's `train/` and `test/`,
# `Training Data/` and `Testing Data/`), matched in any letter case.
TRAIN_FOLDER_NAMES = ("train", "training", "training data")
TEST_FOLDER_NAMES = ("test", "testing", "testing data", "val", "validation")


def split_folders(root):
    """(train, test): the sub-folders of `root` named as its train and test splits (the first
    of TRAIN_FOLDER_NAMES, of TEST_FOLDER_NAMES), None for each one absent."""
    root = Path(root)
    splits = {s.name.lower(): s for s in root.iterdir() if s.is_dir()} if root.is_dir() else {}
    return tuple(next((splits[n] for n in names if n in splits), None)
                 for names in (TRAIN_FOLDER_NAMES, TEST_FOLDER_NAMES))


def scan(root):
    """(class_root, classes, samples): the class names sorted, and (path, label) for every
    image file found, classes in order and files sorted by path within each."""
    given = Path(root).expanduser()
    if not given.is_dir():
        raise FileNotFoundError(f"ImageFolder: {given.absolute()} is not a folder")
    root = class_root(given)
    classes = sorted(e.name for e in root.iterdir() if e.is_dir() and not _hidden(e.name))
    if not classes:
        raise FileNotFoundError(f"ImageFolder: {root} has no class folders; expected "
                                f"{root}/<class name>/<image>.jpg (or .jpeg, .png)")
    samples, empty = [], []
    for label, name in enumerate(classes):
        found, walked = [], {}
        for folder, subfolders, files in os.walk(root / name, followlinks=True):
            try:
                info = os.stat(folder)
            except OSError:
                subfolders[:] = []
                continue
            key = (info.st_dev, info.st_ino)
            if key in walked:                 # a symlink back to a folder already walked
                warnings.warn(f"ImageFolder: skipping {folder}: it is {walked[key]} again "
                              f"(through a symbolic link), already read", stacklevel=3)
                subfolders[:] = []
                continue
            walked[key] = folder
            subfolders[:] = sorted(d for d in subfolders if not _hidden(d))
            found += [Path(folder) / f for f in sorted(files) if _is_image(f) and not _hidden(f)]
        if not found:
            empty.append(name)
        samples += [(path, label) for path in found]
    if empty:
        raise FileNotFoundError(f"ImageFolder: no .jpg, .jpeg or .png images in the class "
                                f"folder(s) {', '.join(repr(e) for e in empty)} of {root}")
    return root, classes, samples


def fingerprint(root, samples):
    """A digest of the image files (relative paths, sizes, labels): changes when one is added,
    removed, renamed, moved to another class or rewritten with another length."""
    digest = hashlib.sha1()
    for path, label in samples:
        try:
            size = os.stat(path).st_size
        except OSError:                      # a dangling symlink: unreadable, still counted
            size = -1
        digest.update(f"{path.relative_to(root).as_posix()}\0{size}\0{label}\n"
                      .encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def resize(image, size, crop=False):
    """Pillow `image` resized to `size` (h, w): exactly, or with `crop` as torchvision's
    Resize + CenterCrop (cover (h, w) keeping the aspect ratio, then take the centre)."""
    Image = _pillow()
    h, w = size
    width, height = image.size
    if not crop:
        return image.resize((w, h), Image.BILINEAR)
    if h * width >= w * height:          # height is the binding side: it becomes h exactly
        new_h, new_w = h, max(w, int(h * width / height))
    else:
        new_h, new_w = max(h, int(w * height / width)), w
    image = image.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - h) / 2.0)), int(round((new_w - w) / 2.0))
    return image.crop((left, top, left + w, top + h))


def load_image(path, size=None, crop=False):
    """uint8 [H, W, 3]: the image at `path` decoded, converted to RGB, resized. BadImageError
    naming the file when Pillow cannot read it."""
    Image = _pillow()
    try:
        source = open_regular(path)
    except OSError as e:
        raise BadImageError(f"ImageFolder: cannot read the image {path}: "
                            f"{e.strerror or e}") from None
    try:
        with source, Image.open(source) as image:
            image = image.convert("RGB")            # decodes the whole file
            if size is not None:
                image = resize(image, size, crop)
            return np.array(image, dtype=np.uint8)
    except Exception as e:        # Pillow raises OSError, SyntaxError, ValueError, bomb errors
        raise BadImageError(f"ImageFolder: cannot read the image {path}: "
                            f"{type(e).__name__}: {e}") from None


def open_regular(path):
    """The file at `path`, opened for reading, if it is a regular file; OSError saying what it
    is otherwise. Opened without blocking and checked on the open file, so a FIFO (which an
    ordinary open would wait on forever) or a device swapped in is refused too."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = safe_hdf5.kind_of(mode)
            raise OSError(0, f"it is {kind}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def write_hdf5(path, images, labels, classes, files=None, **attrs):
    """Write a cache atomically (to a temporary file beside `path`, renamed into place): uint8
    images [N, H, W, C], integer labels [N], the class names, each image's file (or None) and
    JSON attributes. A failure to write is an OSError in one sentence (cupycnn.atomic)."""
    require("h5py", "h5py", "cupycnn.data HDF5 caches")
    from ..checkpoint import _digest, check_data
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"write_hdf5: images must be uint8 [N, H, W, C], got {images.dtype} "
                         f"{images.shape}")
    if labels.dtype.kind not in "iu" or labels.shape != images.shape[:1]:
        raise ValueError(f"write_hdf5: labels must be {len(images)} integers, got "
                         f"{labels.dtype} {labels.shape}")
    images = np.ascontiguousarray(images)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    files = None if files is None else [str(f) for f in files]
    if files is not None and len(files) != len(images):
        raise ValueError(f"write_hdf5: {len(files)} file names for {len(images)} images")
    document = {"format": HDF5_FORMAT, "classes": [str(c) for c in classes], "files": files,
                "attrs": check_data({k: (list(v) if isinstance(v, tuple) else v)
                                     for k, v in attrs.items()}, "the cache's attributes")}
    arrays = [("images", images), ("labels", labels)]
    path = Path(path)
    with atomic.replace(path, what="image cache") as tmp:
        safe_hdf5.write_verified(tmp, arrays, document, CACHE_MAGIC, CACHE_VERSION,
                                 {name: _digest(a) for name, a in arrays},
                                 attrs={"format": np.bytes_(HDF5_FORMAT)})
    return path


def _cache_error(message):
    return ValueError(f"HDF5Dataset: {message}")


def read_hdf5(path):
    """(images, labels, classes, files, attrs) of the cache at `path`, every part checked
    before the images are read (see the module docstring); ValueError saying what is wrong."""
    require("h5py", "h5py", "cupycnn.data.HDF5Dataset")
    path = Path(path)
    where = str(path)
    try:
        header = safe_hdf5.read_header(path, CACHE_MAGIC, CACHE_VERSION, _cache_error, "cache")
    except FileNotFoundError:
        raise FileNotFoundError(f"HDF5Dataset: no cache at {path.absolute()}") from None
    if header is None:
        raise _cache_error(f"{path} is not a cupycnn.data cache of format {HDF5_FORMAT} (an "
                           f"older cache, or another file); delete it, or rebuild it with "
                           f"ImageFolder(root).to_hdf5(path) (ImageFolder.cached does so "
                           f"itself)")
    document, offsets, _ = header
    if not (isinstance(document, dict) and set(document) == {"format", "classes", "files",
                                                             "attrs"}
            and document["format"] == HDF5_FORMAT):
        raise _cache_error(f"{where}: the cache is damaged: its header's document has the "
                           f"wrong fields")
    classes, files, attrs = document["classes"], document["files"], document["attrs"]
    if not (isinstance(classes, list) and len(classes) <= MAX_CLASSES and
            all(isinstance(c, str) for c in classes)):
        raise _cache_error(f"{where}: the cache is damaged: its class names are not a list "
                           f"of names")
    if not isinstance(attrs, dict):
        raise _cache_error(f"{where}: the cache is damaged: its attributes are not a dict")
    f = safe_hdf5.open_file(path, _cache_error, "cache")
    with f:
        found = safe_hdf5.audit(f, _cache_error, where)
        if set(found) != {"images", "labels"}:
            raise _cache_error(f"{where}: the cache holds the datasets {sorted(found)}, "
                               f"expected images and labels")
        safe_hdf5.check_offsets(f, found, offsets, _cache_error, where)
        images, labels = found["images"], found["labels"]
        if images.dtype != np.uint8 or len(images.shape) != 4:
            raise _cache_error(f"{where}: its images are {images.dtype} {images.shape}, "
                               f"expected uint8 [N, H, W, C]")
        if labels.dtype.kind not in "iu" or labels.shape != images.shape[:1]:
            raise _cache_error(f"{where}: its labels are {labels.dtype} {labels.shape}, "
                               f"expected {images.shape[0]} integers")
        if files is not None and not (isinstance(files, list) and len(files) == images.shape[0]
                                      and all(isinstance(x, str) for x in files)):
            raise _cache_error(f"{where}: the cache is damaged: its file names are not "
                               f"{images.shape[0]} names")
        return (safe_hdf5.read(f, "images", _cache_error, where),
                safe_hdf5.read(f, "labels", _cache_error, where), classes, files, attrs)


class HDF5Dataset(ArrayDataset):
    """A dataset from an HDF5 cache written by `ImageFolder.to_hdf5` (or `write_hdf5`), read
    into memory in one pass.

    With `size` ((h, w) or an int) or `classes` given, a cache that holds other image sizes or
    other classes raises CacheMismatchError saying what it holds and how to rebuild it.
    `attrs` holds the cache's attributes (size, crop, source, fingerprint); `files` the source
    file of each image when recorded."""

    def __init__(self, path, size=None, classes=None):
        self.path = Path(path)
        images, labels, stored_classes, self.files, self.attrs = read_hdf5(self.path)
        super().__init__(images, labels, stored_classes)
        wanted = _size_pair(size)
        if wanted is not None and self.image_shape[:2] != wanted:
            raise CacheMismatchError(
                f"HDF5Dataset: {self.path} holds {self.image_shape[0]}x{self.image_shape[1]} "
                f"images, asked for {wanted[0]}x{wanted[1]}; delete it, or rebuild it with "
                f"ImageFolder(root, size=...).to_hdf5(path) (ImageFolder.cached does so itself)")
        if classes is not None and list(classes) != self.classes:
            raise CacheMismatchError(
                f"HDF5Dataset: {self.path} holds the classes {self.classes}, asked for "
                f"{list(classes)}; delete it, or rebuild it with ImageFolder(root).to_hdf5(path)")


class ImageFolder(ArrayDataset):
    """Every .jpg/.jpeg/.png under `root/<class>/`, decoded into memory (torchvision's
    `datasets.ImageFolder` layout and class order; the Kaggle repeated-top-folder layout is
    accepted).

    size      None: keep each image's size (they must all be equal); an int s or (h, w): resize
              every image to it.
    crop      with `size`: torchvision's Resize + CenterCrop (keep the aspect ratio, cut the
              centre) instead of stretching to the size.
    skip_bad  an unreadable file is skipped with one warning naming it, instead of an error.

    images uint8 [N, H, W, 3] (RGB); labels int64 [N]; classes the folder names, sorted;
    `class_to_idx` {name: label}; `samples` (path, label) of every image file found;
    `files` the paths of the images kept; `skipped` (path, reason) of those skipped;
    `root` the folder holding the class folders."""

    def __init__(self, root, size=None, crop=False, skip_bad=False):
        self.size, self.crop, self.skip_bad = _size_pair(size), bool(crop), bool(skip_bad)
        self.root, classes, self.samples = scan(root)
        self.class_to_idx = {name: k for k, name in enumerate(classes)}
        decoded = self._decode_all()
        self.skipped = [(path, str(r)) for (path, _), r in zip(self.samples, decoded)
                        if isinstance(r, BadImageError)]
        for path, reason in self.skipped:
            warnings.warn(f"skipping an unreadable image: {reason}", stacklevel=2)
        kept = [(s, r) for s, r in zip(self.samples, decoded) if not isinstance(r, Exception)]
        self.files = [path for (path, _), _ in kept]
        if not kept:
            raise ValueError(f"ImageFolder: none of the {len(self.samples)} image files under "
                             f"{self.root} could be read")
        shapes = {}
        for path, image in zip(self.files, (r for _, r in kept)):
            shapes.setdefault(image.shape, path)
        if len(shapes) > 1:
            (s1, p1), (s2, p2) = list(shapes.items())[:2]
            raise ValueError(f"ImageFolder: the images differ in size ({p1} is {s1[0]}x{s1[1]}, "
                             f"{p2} is {s2[0]}x{s2[1]}); pass size=(height, width) to resize "
                             f"them, with crop=True to keep their aspect ratio")
        images = np.stack([r for _, r in kept])
        labels = np.array([label for (_, label), _ in kept], dtype=np.int64)
        super().__init__(images, labels, classes)

    def _decode_all(self):
        """One decoded image or BadImageError per sample, in order (raised unless skip_bad)."""
        def decode(sample):
            try:
                return load_image(sample[0], self.size, self.crop)
            except BadImageError as e:
                if not self.skip_bad:
                    raise
                return e
        _pillow()                         # a missing Pillow is one clear error, up front
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            return list(pool.map(decode, self.samples))

    def cache_attrs(self):
        """The attributes that say what a cache of this folder holds."""
        return {"size": list(self.size) if self.size else [], "crop": self.crop,
                "source": str(self.root), "fingerprint": fingerprint(self.root, self.samples)}

    def to_hdf5(self, path):
        """Write the decoded images, labels and class names to an HDF5 cache at `path`
        (atomically) and return the path. `HDF5Dataset(path)` loads it."""
        files = [p.relative_to(self.root).as_posix() for p in self.files]
        return write_hdf5(path, self.images, self.labels, self.classes, files,
                          **self.cache_attrs())

    @classmethod
    def cached(cls, root, path, size=None, crop=False, skip_bad=False):
        """`HDF5Dataset(path)` when the cache there was made from this folder with the same
        `size` and `crop` and the folder's classes and files have not changed since; otherwise
        decode the folder, (re)write the cache, saying why on stderr, and load it."""
        path = Path(path)
        wanted_size = _size_pair(size)
        root_found, classes, samples = scan(root)
        if path.exists():
            try:
                cache = HDF5Dataset(path)
            except ValueError as e:
                reason = f"it cannot be read ({e})"
            else:
                attrs = cache.attrs
                stored_size = tuple(attrs.get("size", [])) or None
                if cache.classes != classes:
                    reason = (f"its classes {cache.classes} differ from the folder's "
                              f"{classes}")
                elif stored_size != wanted_size:
                    reason = f"it was made with size={stored_size}, asked for {wanted_size}"
                elif bool(attrs.get("crop", False)) != bool(crop):
                    reason = f"it was made with crop={bool(attrs.get('crop'))}, asked for {crop}"
                elif attrs.get("fingerprint") != fingerprint(root_found, samples):
                    reason = f"the image files under {root_found} changed since it was written"
                else:
                    return cache
            print(f"cupycnn.data: rebuilding the cache {path}: {reason}", file=sys.stderr)
        else:
            print(f"cupycnn.data: writing the cache {path} from {root_found}", file=sys.stderr)
        cls(root, size=size, crop=crop, skip_bad=skip_bad).to_hdf5(path)
        return HDF5Dataset(path)
