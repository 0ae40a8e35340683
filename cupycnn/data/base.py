"""What every dataset is, an in-memory one, views of one, and the validation split.

The dataset interface (every class in `cupycnn.data` has it):

    len(ds)              number of examples
    ds[i]                (image, label): image uint8 [H, W, C], label an int
    ds.classes           list of class names; label k is ds.classes[k]
    ds.images            uint8 [N, H, W, C], the whole dataset in memory
    ds.labels            int64 [N]
    ds.storage()         (images, labels, index): the arrays that hold the examples and, for a
                         view, the int64 positions of its examples in them (None: all, in order)

`storage()` is what a `Loader` reads: it lets a view (`Subset`, either half of
`train_val_split`) share its parent's arrays, so that a training and a validation loader on one
dataset never copy its images and, on a GPU, upload them once. `images` of a view gathers its
examples into a new array (a copy); loaders never ask for it.
"""
import numpy as np

from ..ops._check import check_integer, check_shape, shown


class Dataset:
    """Base of every dataset: subclasses set `classes` and implement `storage()` (or override
    `__len__`, `__getitem__`, `images` and `labels` themselves)."""

    classes = ()

    def storage(self):
        raise NotImplementedError

    def __len__(self):
        images, labels, index = self.storage()
        return len(labels) if index is None else len(index)

    def _position(self, i):
        """The example index i (negative counts from the end) as an int in [0, N): TypeError
        or IndexError naming the dataset otherwise."""
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"{type(self).__name__} indices must be integers, got "
                            f"{type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"{type(self).__name__} index {i} out of range for {n} examples")
        return int(i) % n

    def __getitem__(self, i):
        i = self._position(i)
        images, labels, index = self.storage()
        j = i if index is None else int(index[i])
        return images[j], int(labels[j])

    @property
    def images(self):
        images, labels, index = self.storage()
        return images if index is None else images[index]

    @property
    def labels(self):
        images, labels, index = self.storage()
        return labels if index is None else labels[index]

    @property
    def image_shape(self):
        """(H, W, C) of every image."""
        return tuple(int(s) for s in self.storage()[0].shape[1:])

    def class_counts(self):
        """int64 [len(classes)]: how many examples each class has."""
        return np.bincount(self.labels, minlength=len(self.classes)).astype(np.int64)

    def __repr__(self):
        h, w, c = self.image_shape
        return (f"{type(self).__name__}({len(self)} images {h}x{w}x{c}, "
                f"{len(self.classes)} classes)")


FLOAT_IMAGE_TOLERANCE = 0.01    # in 0..255 units: float images further than this from 8-bit
                                # values are said to be rounded


def float_images_to_uint8(op, images):
    """Float images with pixel values in [0, 1] (x / 255, as torchvision's ToTensor gives and
    Keras scripts feed), rounded to uint8: what the loader's transforms and the augmentation
    kernels read. Exact for images that came from 8-bit files; otherwise a warning says how far
    the rounding moved a pixel. Values outside [0, 1] are a ValueError that says what to do."""
    images = np.asarray(images)
    if images.size and not np.isfinite(images).all():
        raise ValueError(f"{op}: float images hold NaN or infinite values")
    low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{op}: float images must hold pixel values in [0, 1] (x / 255, as "
                         f"torchvision's ToTensor gives); these range over [{low:.3g}, "
                         f"{high:.3g}]. Pixel values in 0..255: give them as uint8 (or divide "
                         f"by 255). Already normalised network input [N, C, H, W]: use "
                         f"TensorDataset, or pass the array to Trainer.fit(x, y) as it is")
    scaled = images.astype(np.float64) * 255.0
    rounded = np.rint(scaled)
    moved = float(np.abs(scaled - rounded).max()) if images.size else 0.0
    if moved > FLOAT_IMAGE_TOLERANCE:
        import warnings
        warnings.warn(f"{op}: float images rounded to 8 bits (the loader's transforms read "
                      f"uint8 images): a pixel moved by up to {moved:.2f}/255", stacklevel=3)
    return rounded.astype(np.uint8)


def as_image_batch(op, images, labels):
    """Check and normalise the arrays of an in-memory dataset: images uint8 [N, H, W, C], or
    float in [0, 1] (rounded to uint8, `float_images_to_uint8`); a [N, H, W] array becomes
    [N, H, W, 1]; labels int64 [N]. ValueError naming `op` else."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype.kind == "f":
        images = float_images_to_uint8(op, images)
    if images.dtype != np.uint8:
        raise ValueError(f"{op}: images must be uint8 (0..255) or float (0..1), got "
                         f"{images.dtype}")
    bound = check_shape(op, "images", images.shape, ("N", "H", "W", "C"), {})
    labels = np.asarray(labels)
    if labels.size == 0:
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{op}: labels must be integers, got {labels.dtype}")
    check_shape(op, "labels", labels.shape, ("N",), bound)
    return np.ascontiguousarray(images), np.ascontiguousarray(labels, dtype=np.int64)


class ArrayDataset(Dataset):
    """A dataset held in two arrays: images [N, H, W, C] (or [N, H, W]), uint8 in 0..255 or
    float in 0..1 (rounded to uint8: see `float_images_to_uint8`), and labels int [N].

    `classes` defaults to "0", "1", ... up to the largest label."""

    def __init__(self, images, labels, classes=None):
        self._images, self._labels = as_image_batch(type(self).__name__, images, labels)
        if classes is None:
            top = int(self._labels.max()) + 1 if len(self._labels) else 0
            classes = [str(k) for k in range(top)]
        self.classes = list(classes)
        if len(self._labels) and not (0 <= self._labels.min() and
                                      self._labels.max() < len(self.classes)):
            raise ValueError(f"{type(self).__name__}: labels must lie in [0, "
                             f"{len(self.classes)}) for {len(self.classes)} classes, got "
                             f"[{self._labels.min()}, {self._labels.max()}]")

    def storage(self):
        return self._images, self._labels, None

    def __len__(self):
        return len(self._labels)


class TensorDataset(Dataset):
    """Network input as it is, PyTorch's `TensorDataset(x, y)`: float inputs [N, ...] (e.g.
    already normalised [N, C, H, W], or features [N, F]) and int labels [N]. A Loader serves
    `x[i]` batches as float32 arrays of the current device, no transform needed; unlike the
    image datasets there is no `image_shape` (the inputs need not be images)."""

    def __init__(self, inputs, labels, classes=None):
        op = "TensorDataset"
        inputs = np.asarray(inputs)
        if inputs.dtype.kind not in "fiu" or inputs.ndim < 2:
            raise ValueError(f"{op}: inputs must be a numeric array [N, ...], got "
                             f"{inputs.dtype} of shape {inputs.shape}")
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu" or labels.shape != (len(inputs),):
            raise ValueError(f"{op}: labels must be integers of shape ({len(inputs)},), got "
                             f"{labels.dtype} of shape {labels.shape}")
        self._inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        self._labels = np.ascontiguousarray(labels, dtype=np.int64)
        top = int(self._labels.max()) + 1 if len(self._labels) else 0
        self.classes = list(classes) if classes is not None else [str(k) for k in range(top)]
        if len(self._labels) and (self._labels.min() < 0 or top > len(self.classes)):
            raise ValueError(f"{op}: labels must lie in [0, {len(self.classes)}), got "
                             f"[{self._labels.min()}, {top - 1}]")

    def storage(self):
        return self._inputs, self._labels, None

    def __len__(self):
        return len(self._labels)

    @property
    def image_shape(self):
        raise AttributeError("TensorDataset holds network input, not images: no image_shape")

    def __repr__(self):
        return f"TensorDataset({len(self)} inputs of shape {self._inputs.shape[1:]})"


class Subset(Dataset):
    """The examples of `dataset` at `indices`, in that order: a view that holds the indices, not
    the images (PyTorch's `torch.utils.data.Subset`). Of a dataset that names its own kind of
    view in `subset_class` (a streamed one: cupycnn.data.stream.StreamingSubset), that view."""

    def __new__(cls, dataset=None, indices=None):
        view = getattr(dataset, "subset_class", None) if cls is Subset else None
        return super().__new__(view or cls)

    def __init__(self, dataset, indices):
        n = len(dataset)
        try:
            given = np.asarray(indices)
        except (ValueError, TypeError) as e:
            raise TypeError(f"Subset: indices must be integers, got {type(indices).__name__} "
                            f"({e})") from None
        if given.size and given.dtype.kind not in "iu":       # 3.7 is not an index
            raise TypeError(f"Subset: indices must be integers, got {given.dtype} values")
        indices = given.astype(np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= n):
            raise IndexError(f"Subset: indices must lie in [0, {n}) for a dataset of {n} "
                             f"examples, got [{indices.min()}, {indices.max()}]")
        self.dataset, self.indices = dataset, indices
        self.classes = list(dataset.classes)

    def storage(self):
        images, labels, index = self.dataset.storage()
        return images, labels, (self.indices if index is None else index[self.indices])

    def __len__(self):
        return len(self.indices)


def _largest_remainder(counts, total):
    """Integers k_c <= counts_c summing to `total`, proportional to counts (floor of the exact
    share, then one more to the classes with the largest remainders; ties to the lower class)."""
    exact = counts * (total / counts.sum())
    share = np.floor(exact).astype(np.int64)
    left = int(total - share.sum())
    order = sorted(range(len(counts)), key=lambda c: (-(exact[c] - share[c]), c))
    for c in order[:left]:
        share[c] += 1
    return np.minimum(share, counts)


def train_val_split(dataset, val_fraction, seed, stratified=True):
    """Split `dataset` into (train, val) `Subset`s, views that share its images.

    The validation set has round(val_fraction * N) examples. Stratified (the default), every
    class gives its share (largest-remainder rounding, so the total is exact): the class
    proportions of both halves equal the dataset's, to one example per class. The examples are
    chosen by a generator seeded with `seed`, so a seed always gives the same split; each half
    lists its examples in the dataset's order."""
    op = "train_val_split"
    if isinstance(val_fraction, bool) or not isinstance(
            val_fraction, (int, float, np.integer, np.floating)) or \
            not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"{op}: val_fraction must lie strictly between 0 and 1, got "
                         f"{shown(val_fraction)}")
    n = len(dataset)
    n_val = int(round(float(val_fraction) * n))
    if not 0 < n_val < n:
        raise ValueError(f"{op}: val_fraction={val_fraction} of {n} examples leaves "
                         f"{n_val} for validation and {n - n_val} for training; both need "
                         f"at least one")
    rng = np.random.default_rng(check_integer(op, "seed", seed, 0))
    labels = np.asarray(dataset.labels)
    if stratified:
        classes = np.unique(labels)
        members = [np.flatnonzero(labels == c) for c in classes]
        counts = np.array([len(m) for m in members], dtype=np.int64)
        take = _largest_remainder(counts, n_val)
        val = np.concatenate([rng.permutation(m)[:k] for m, k in zip(members, take)])
    else:
        val = rng.permutation(n)[:n_val]
    is_val = np.zeros(n, dtype=bool)
    is_val[val] = True
    return Subset(dataset, np.flatnonzero(~is_val)), Subset(dataset, np.flatnonzero(is_val))
