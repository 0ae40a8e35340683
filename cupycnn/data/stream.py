"""Streamed image folders: the files listed up front, each decoded only when a batch needs it.

    train = StreamingImageFolder("photos/train", RandomResizedCrop(224))
    train = ImageNet("imagenet", "train", RandomResizedCrop(224))
    val = ImageNet("imagenet", "val", ResizeCenterCrop(256, 224))
    loader = Loader(train, 256, shuffle=True, num_workers=8, transform=Normalize(mean, std))

Memory does not grow with the images: a dataset holds its file list in three flat arrays (the
relative paths' bytes, their offsets, the labels: about 40 bytes a file, 50 MB for ImageNet's
1.28 million, and no Python object per file, so forked workers share the pages instead of
copying them as reference counts touch them). Batches are decoded by the Loader's worker
processes (cupycnn.data.workers) into shared memory.

ImageNet layouts (`ImageNet(root, split)`): `root/train/<wnid>/*.JPEG` (class folders, sorted:
label k is the k-th wnid), and for `val` either class folders too, or the 50,000 files flat in
`root/val/` with a labels file: Kaggle's `LOC_val_solution.csv` (`ImageId,PredictionString`,
the first word of the prediction string the wnid), or lines `FILE LABEL` (LABEL a wnid or a
class index, as in Caffe's `val.txt`), found in root or given as `labels_file`. Kaggle's own
layout (`root/ILSVRC/Data/CLS-LOC/train/...`) is found as well; `LOC_synset_mapping.txt`, when
present, gives the classes' readable names (`class_names`).
"""
import csv
import os
from pathlib import Path

import numpy as np

from .base import Dataset, Subset
from .decode import Decode, DecodeTransform, image_size
from .folder import BadImageError, open_regular, scan

MAX_FILE_BYTES = 256 * 2 ** 20      # an image file larger than this is refused, not read


def read_file(path, name=None):
    """The bytes of the regular file at `path` (BadImageError naming it otherwise: not a
    regular file, unreadable, or over MAX_FILE_BYTES)."""
    name = name or os.fsdecode(path)
    try:
        with open_regular(path) as f:            # a FIFO is refused, not waited on
            info = os.fstat(f.fileno())
            if info.st_size > MAX_FILE_BYTES:
                raise OSError(f"{info.st_size} bytes, over the limit of {MAX_FILE_BYTES}")
            return f.read()
    except OSError as e:
        raise BadImageError(f"cannot read the image {name}: {e.strerror or e}") from None


class PathTable:
    """N file paths under one root in flat arrays: the relative paths' bytes, their offsets
    and the labels. table[i] is the full path (str, non-UTF-8 bytes kept by surrogateescape)."""

    def __init__(self, root, relative_paths, labels):
        self.root = os.fsencode(str(root))
        encoded = [os.fsencode(str(p)) for p in relative_paths]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        self.labels = np.asarray(labels, dtype=np.int64).copy()

    def __len__(self):
        return len(self.labels)

    def relative(self, i):
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes()

    def __getitem__(self, i):
        return os.fsdecode(os.path.join(self.root, self.relative(i)))


class StreamingDataset(Dataset):
    """A dataset whose examples are read and decoded on demand (map-style: any example by its
    index). Subclasses set `classes`, `transform` (a DecodeTransform) and implement
    `__len__`, `read(i) -> (encoded bytes, label, name)` and `labels`.

    ds[i] decodes example i (as draw i of epoch 0 of a random transform); a Loader decodes in
    its worker processes. `images` does not exist: a streamed dataset is never in memory."""

    streaming = True
    transform = None

    def _set_transform(self, transform):
        if transform is None:
            transform = Decode()
        if not isinstance(transform, DecodeTransform):
            raise ValueError(f"{type(self).__name__}: transform must be a decode transform "
                             f"(RandomResizedCrop, ResizeCenterCrop, Resize, Decode), got "
                             f"{type(transform).__name__}; device transforms such as Normalize "
                             f"go to the Loader's transform")
        self.transform = transform

    @property
    def subset_class(self):
        """What Subset(self, indices) makes: a streamed view, except of a sharded dataset (read
        in the order of its plan(), never by index)."""
        return None if hasattr(self, "plan") else StreamingSubset

    def read(self, i):
        raise NotImplementedError

    def storage(self):
        raise TypeError(f"{type(self).__name__} is streamed: its images are decoded by a "
                        f"Loader's workers, never held in memory")

    @property
    def images(self):
        raise TypeError(f"{type(self).__name__} is streamed and has no `images` array; "
                        f"iterate a Loader over it (or index it: ds[i] decodes one image)")

    def first_example(self):
        """(encoded bytes, label, name) of the first example."""
        return self.read(0)

    @property
    def image_shape(self):
        if self.transform.shape is None:         # Decode(): the first image's size, from its header
            data, _, name = self.first_example()
            h, w = image_size(data, name)
            self.transform.size, self.transform.shape = (h, w), (h, w, 3)
        return tuple(self.transform.shape)

    def __getitem__(self, i):
        i = self._position(i)
        data, label, name = self.read(i)
        return self.transform(data, name, draw=i, epoch=0), label

    def encoded_batches(self, plan, epoch):
        """Worker side: for a map-style plan [(positions, draws), ...] the batches of encoded
        samples [(data, label, name, draw), ...], read as they are needed."""
        for positions, draws in plan:
            yield [(*self.read(int(p)), int(d)) for p, d in zip(positions, draws)]

    def __repr__(self):
        return (f"{type(self).__name__}({len(self)} images, {len(self.classes)} classes, "
                f"{self.transform!r})")


class StreamingSubset(StreamingDataset, Subset):
    """`Subset(streamed dataset, indices)` (and train_val_split's halves): the parent's
    examples at `indices`, read and decoded by the parent's transform."""

    @property
    def transform(self):
        return self.dataset.transform

    def __len__(self):
        return len(self.indices)

    @property
    def labels(self):
        return np.asarray(self.dataset.labels)[self.indices]

    def read(self, i):
        return self.dataset.read(int(self.indices[i]))

    storage = StreamingDataset.storage


class StreamingImageFolder(StreamingDataset):
    """torchvision's ImageFolder layout (`root/<class>/<image>`, the same rules as
    cupycnn.data.ImageFolder: sorted classes, .jpg/.jpeg/.png at any depth, the Kaggle repeated
    top folder), streamed: only the file list is read up front. transform: a decode transform
    (default Decode(): every image must be the same size)."""

    def __init__(self, root, transform=None):
        self._set_transform(transform)
        self.root, classes, samples = scan(root)
        self.classes = list(classes)
        self.class_to_idx = {name: k for k, name in enumerate(self.classes)}
        self.table = PathTable(self.root, [p.relative_to(self.root) for p, _ in samples],
                               [label for _, label in samples])

    def __len__(self):
        return len(self.table)

    @property
    def labels(self):
        return self.table.labels

    def path(self, i):
        return self.table[i]

    def read(self, i):
        path = self.table[i]
        return read_file(path), int(self.table.labels[i]), path


# --------------------------------------------------------------------------------- ImageNet

_LABEL_FILES = ("LOC_val_solution.csv", "val.txt", "val_labels.txt")


def _imagenet_root(root):
    """root, or the Kaggle layout's ILSVRC/Data/CLS-LOC inside it."""
    root = Path(root).expanduser()
    kaggle = root / "ILSVRC" / "Data" / "CLS-LOC"
    if not (root / "train").is_dir() and not (root / "val").is_dir() and kaggle.is_dir():
        return kaggle
    return root


def _has_class_folders(folder):
    return any(e.is_dir() and not e.name.startswith(".") for e in folder.iterdir())


def val_label_tokens(path):
    """{file stem: label token} from a validation labels file: Kaggle's LOC_val_solution.csv
    (ImageId,PredictionString; the token is the prediction string's first word) or lines
    `FILE LABEL` (the token a class name or an index)."""
    path = Path(path)
    out = {}
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        first = f.readline()
        f.seek(0)
        if first.replace(" ", "").lower().startswith("imageid,predictionstring"):
            rows = csv.reader(f)
            next(rows)
            for line, row in enumerate(rows, start=2):
                if len(row) < 2 or not row[1].split():
                    raise ValueError(f"ImageNet: {path}, line {line}: expected "
                                     f"ImageId,PredictionString, got {row!r}")
                out[Path(row[0]).stem] = row[1].split()[0]
        else:
            for line, text in enumerate(f, start=1):
                parts = text.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise ValueError(f"ImageNet: {path}, line {line}: expected `FILE LABEL`, "
                                     f"got {text.strip()!r}")
                out[Path(parts[0]).stem] = parts[1]
    return out


def read_val_labels(path, classes):
    """{file stem: label}: val_label_tokens mapped onto `classes` (a token is a class name or
    an index into them)."""
    index = {name: k for k, name in enumerate(classes)}
    out = {}
    for stem, token in val_label_tokens(path).items():
        if token in index:
            out[stem] = index[token]
        elif token.isdigit() and int(token) < len(classes):
            out[stem] = int(token)
        else:
            raise ValueError(f"ImageNet: {path}: the label {token!r} of {stem} is neither one "
                             f"of the {len(classes)} classes nor an index below {len(classes)}")
    return out


class ImageNet(StreamingImageFolder):
    """ILSVRC-2012 as it is laid out on disk (see the module's docstring), streamed.

    split "train" or "val". The classes are the sorted class folders of train/ (so that val's
    labels agree with train's even when only val is used, when train/ exists), else of val/,
    else the labels file's. `class_names`: readable names from LOC_synset_mapping.txt when
    present, else the wnids."""

    def __init__(self, root, split="train", transform=None, labels_file=None):
        if split not in ("train", "val"):
            raise ValueError(f"ImageNet: split must be 'train' or 'val', got {split!r}")
        given = Path(root).expanduser()
        base = _imagenet_root(given)
        folder = base / split
        if not folder.is_dir():
            raise FileNotFoundError(f"ImageNet: no {split}/ folder in {given.absolute()} "
                                    f"(expected {given}/{split}/ or the Kaggle layout "
                                    f"{given}/ILSVRC/Data/CLS-LOC/{split}/)")
        train = base / "train"
        if split == "val" and not _has_class_folders(folder):
            self._flat_val(given, folder, train, transform, labels_file)
        else:
            super().__init__(folder, transform)
            if split == "val" and train.is_dir():
                train_classes = scan(train)[1]
                if self.classes != train_classes:
                    raise ValueError(f"ImageNet: val/ has the classes {self.classes[:3]}... "
                                     f"({len(self.classes)}), train/ has {train_classes[:3]}... "
                                     f"({len(train_classes)}); they must be the same")
        self.class_names = self._names(given) or list(self.classes)

    def _flat_val(self, given, folder, train, transform, labels_file):
        self._set_transform(transform)
        if labels_file is None:
            found = [p for name in _LABEL_FILES for p in (given / name, folder / name)
                     if p.is_file()]
            if not found:
                raise FileNotFoundError(f"ImageNet: {folder} holds images without class "
                                        f"folders and no labels file was found (looked for "
                                        f"{', '.join(_LABEL_FILES)} in {given} and {folder}); "
                                        f"pass labels_file=")
            labels_file = found[0]
        if train.is_dir():
            classes = scan(train)[1]
        else:          # the class names the labels file uses (indices need train/'s classes)
            classes = sorted(set(val_label_tokens(labels_file).values()))
        labels = read_val_labels(labels_file, classes)
        files = sorted(e.name for e in folder.iterdir()
                       if e.name.lower().endswith((".jpg", ".jpeg", ".png"))
                       and not e.name.startswith("."))
        missing = [f for f in files if Path(f).stem not in labels]
        if missing:
            raise ValueError(f"ImageNet: {len(missing)} of the {len(files)} images in {folder} "
                             f"have no label in {labels_file} (the first: {missing[0]})")
        self.root, self.classes = folder.resolve(), list(classes)
        self.class_to_idx = {name: k for k, name in enumerate(self.classes)}
        self.table = PathTable(self.root, files, [labels[Path(f).stem] for f in files])

    def _names(self, given):
        mapping = given / "LOC_synset_mapping.txt"
        if not mapping.is_file():
            return None
        names = {}
        for line in mapping.read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, words = line.partition(" ")
            names[wnid] = words.strip() or wnid
        return [names.get(c, c) for c in self.classes]
