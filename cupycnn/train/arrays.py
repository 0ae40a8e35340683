"""Keras-style data for the Trainer: NumPy arrays in, Loaders out.

    trainer.fit(x_train, y_train, epochs=10, batch_size=32, validation_data=(x_val, y_val))
    trainer.evaluate(x_test, y_test)          # {"loss", "accuracy", "count"}
    trainer.predict(x_test)                   # probabilities [N, classes], row i for x_test[i]

What an array `x` is follows from its dtype and the model's first layer (this is the one rule):

    uint8 [N, H, W, C] or [N, H, W]                  images, pixel values 0..255
    float [N, H, W, C] with C the model's input channels (or [N, H, W] for one channel)
                                                      images, pixel values 0..1 (x / 255)
    float [N, C, H, W], [N, F], ...                   network input, fed as it is

Images become an `ArrayDataset` (float images rounded to uint8, exact for images from 8-bit
files) normalised on the device by `Normalize` with the trainer's `normalization`, {"mean",
"std"} per channel in 0..1 units: `fit` computes it from its training images when the trainer
has none, and it goes into checkpoints, so `examples/predict.py` feeds image files the same way.
`evaluate` and `predict` use it. Network input becomes a `TensorDataset`, served untouched.
Labels are class indices [N] (one-hot rows are refused with the fix).

Under data parallelism `fit` and `evaluate` shard the arrays over the ranks (every rank passes
the same arrays; `batch_size` is the global batch); `predict` on arrays runs on each rank alone
over all of them, so rank 0 may call it by itself.
"""
import numpy as np

from .. import devices as _device
from ..data import ArrayDataset, Loader, Normalize, TensorDataset, channel_stats


def is_array(x):
    """An array (NumPy or device) rather than a loader of batches."""
    return hasattr(x, "shape") and hasattr(x, "dtype")


def refuse_a_list_of_arrays(x, who):
    """A list of images (or of batches) is neither one array nor a loader of (x, y) batches:
    say so, instead of failing inside the loop on unpacking an image."""
    if isinstance(x, (list, tuple)) and len(x) and is_array(x[0]):
        raise ValueError(f"{who}: got a {type(x).__name__} of {len(x)} arrays; give one array "
                         f"[N, ...] (np.stack of the images) or a loader of (x, y) batches")


def input_channels(model):
    """The channel count the model's first layer with parameters takes (a Conv2D's
    in_channels), or None when it takes something else (a Dense layer: features)."""
    for layer in model.layers():
        if layer.params:
            return getattr(layer, "in_channels", None)
    return None


def kind_of(x, model, who):
    """"images" or "input" for an array x (see the module docstring)."""
    if x.dtype == np.uint8:
        return "images"
    if x.dtype.kind != "f":
        raise ValueError(f"{who}: x must be uint8 images or a float array, got {x.dtype}")
    channels = input_channels(model)
    if channels is None:
        return "input"
    if x.ndim == 4 and x.shape[1] == channels:
        return "input"
    if (x.ndim == 4 and x.shape[3] == channels) or (x.ndim == 3 and channels == 1):
        return "images"
    raise ValueError(f"{who}: x has shape {tuple(x.shape)}, but the model's first layer takes "
                     f"{channels} channels: give images [N, H, W, {channels}] (uint8, or float "
                     f"in 0..1) or network input [N, {channels}, H, W]")


def _labels(y, n, who):
    y = np.asarray(_device.asnumpy(y))
    if y.ndim == 2 and y.shape[0] == n:
        raise ValueError(f"{who}: y has shape {y.shape}: labels are class indices [N], not "
                         f"one-hot rows; pass y.argmax(axis=1)")
    if y.shape != (n,):
        raise ValueError(f"{who}: y must have shape ({n},), one class index per row of x, got "
                         f"{y.shape}")
    if y.dtype.kind == "f" and np.array_equal(y, np.rint(y)):
        y = y.astype(np.int64)                  # Keras scripts often hold labels as floats
    return y


def array_loader(trainer, x, y, batch_size, *, who, shuffle=False, seed=0, train=False,
                 shard=True):
    """A Loader over arrays x (and labels y; None for prediction) for `trainer`'s model. With
    `train`, a trainer without a normalization gets the one of these images."""
    x = np.asarray(_device.asnumpy(x))
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{who}: x must be an array [N, ...] with at least one row, got shape "
                         f"{x.shape}")
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:                     # True is not 1
        raise ValueError(f"{who}: batch_size must be a positive integer, got {batch_size!r}")
    labels = np.zeros(len(x), np.int64) if y is None else _labels(y, len(x), who)
    if kind_of(x, trainer.model, who) == "images":
        dataset = ArrayDataset(x, labels)
        if trainer.normalization is None:
            if not train:
                raise ValueError(f"{who}: these are images, and the trainer has no input "
                                 f"normalisation to feed them with: fit it on images first "
                                 f"(fit computes one), or give Trainer(normalization="
                                 f"{{'mean': [...], 'std': [...]}}) in 0..1 units")
            mean, std = channel_stats(dataset.images)
            trainer.normalization = {"mean": list(mean), "std": list(std)}
        transform = Normalize(trainer.normalization["mean"], trainer.normalization["std"])
    else:
        dataset, transform = TensorDataset(x, labels), None
    ctx = trainer.distributed if shard else None
    if ctx is None or ctx.size == 1:
        return Loader(dataset, int(batch_size), shuffle=shuffle, seed=seed, transform=transform,
                      pad=train)
    return Loader(dataset, ctx.per_rank_batch(int(batch_size)), shuffle=shuffle, seed=seed,
                  transform=transform, rank=ctx.rank, world_size=ctx.size, pad=train)
