"""Transforms the loader applies to each batch on the device: uint8 [B, H, W, C] images in,
float32 [B, C, H, W] normalised network input out, in one kernel launch (kernels/augment.cu);
under precision "bf16" the output is BF16 storage (ops._storage), the activations' storage.

    from cupycnn.data.transforms import RandomCropFlip, CIFAR10_MEAN, CIFAR10_STD
    train_transform = RandomCropFlip(padding=4, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    eval_transform = train_transform.eval()          # Normalize(CIFAR10_MEAN, CIFAR10_STD)
    x = train_transform(images)                      # images: the loader's uint8 batch

| transform | what it does (PyTorch / Keras equivalent) |
| --- | --- |
| `Normalize(mean, std)` | ToTensor() + Normalize(mean, std): (x / 255 - mean) / std |
| `RandomCropFlip(padding, ...)` | RandomCrop(size, padding) + RandomHorizontalFlip() + the above |
| `RandomAffine(degrees, translate, scale, ...)` | torchvision's RandomAffine (+ optional flip) |
| `ImageDataGenerator(rotation_range, ...)` | Keras' ImageDataGenerator geometric augmentation |
| `Compose(t1, t2, ...)` | applies them in turn |

Randomness: a random transform holds a 64-bit `seed` (from `cupycnn.random.next_seed()` unless
given) and a `step`, the number of batches it has transformed. Batch `step` uses Philox stream
`step`, image b of it the counters b * DRAWS + k, inside the kernel: the same seed and step give
the same augmentation on cuda, sim and numpy. `random_state()` / `set_random_state()` save and
restore (seed, step) with a checkpoint, so a resumed run continues the same sequence. For data
parallel training give each rank its own seed (e.g. seed + rank): the same seed on two ranks
augments image b of their (different) batches identically.
"""
import dataclasses

import numpy as np

from .. import devices as _device
from .. import random as _random
from ..ops import augment as _ops
from ..ops._check import shown
from ..ops._storage import precision_storage
from ..ops.augment import AffineRanges

# CIFAR-10's per-channel mean and standard deviation (RGB, in [0, 1] units) over the 50,000
# training images, every pixel counted (population std): the values commonly published, which
# `channel_stats(CIFAR10(train=True).images)` reproduces. (Another set seen in code,
# std = (0.2023, 0.1994, 0.2010), is not the per-pixel standard deviation.)
CIFAR10_MEAN = (0.4914008, 0.4821584, 0.4465309)
CIFAR10_STD = (0.2470322, 0.2434851, 0.2615878)


def channel_stats(images, chunk=4096):
    """Per-channel mean and standard deviation of a uint8 dataset [N, H, W, C] (NumPy or device
    array, or an object with an `.images` attribute such as a dataset), in [0, 1] units, every
    pixel weighted equally (population std, as the normalisation constants above). Exact
    integer sums in chunks of `chunk` images. Returns two tuples of C floats."""
    images = getattr(images, "images", images)
    if images.ndim != 4 or np.dtype(images.dtype) != np.uint8:
        raise ValueError(f"channel_stats: images must be uint8 with shape (N, H, W, C), got "
                         f"{images.dtype} {tuple(images.shape)}")
    channels = images.shape[-1]
    total = np.zeros(channels, dtype=np.int64)
    total_sq = np.zeros(channels, dtype=np.int64)
    for start in range(0, images.shape[0], chunk):
        block = _device.asnumpy(images[start:start + chunk]).reshape(-1, channels).astype(np.int64)
        total += block.sum(axis=0)
        total_sq += (block * block).sum(axis=0)
    count = images.size // channels
    if count == 0:
        raise ValueError("channel_stats: no pixels (an empty dataset)")
    mean = total / count
    var = np.maximum(total_sq / count - mean * mean, 0.0)
    return tuple(float(m) for m in mean / 255.0), tuple(float(s) for s in np.sqrt(var) / 255.0)


def _pair(name, value, symmetric_about, owner):
    """A (low, high) interval from a number v (symmetric_about -+ v) or a pair."""
    if np.ndim(value) == 0:
        v = float(value)
        if v < 0:
            raise ValueError(f"{owner}: {name} must be non-negative when a single number, got "
                             f"{shown(value)}")
        return (symmetric_about - v, symmetric_about + v)
    values = tuple(float(v) for v in value)
    if len(values) != 2 or values[0] > values[1]:
        raise ValueError(f"{owner}: {name} must be a number or a pair (low, high) with "
                         f"low <= high, got {shown(value)}")
    return values


def _flip_probability(flip, owner):
    p = 0.5 if flip is True else (0.0 if flip is False else float(flip))
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{owner}: flip must be True, False or a probability in [0, 1], got "
                         f"{flip!r}")
    return p


class Transform:
    """A callable on a uint8 batch [B, H, W, C] of the current device, returning float32
    [B, C, H, W]. Subclasses set `mean` and `std` (the normalisation) and `__call__`."""

    mean, std = 0.0, 1.0

    def __call__(self, images):
        raise NotImplementedError(f"{type(self).__name__}.__call__")

    def eval(self):
        """The evaluation counterpart: the same normalisation and no augmentation."""
        return Normalize(self.mean, self.std)

    def random_state(self):
        """What the next outputs depend on besides the images: {} for deterministic transforms,
        {"seed", "step"} for random ones. Save it with a checkpoint."""
        return {}

    def set_random_state(self, state):
        """Restore what random_state() returned."""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self):
        return f"mean={self.mean}, std={self.std}"


class Normalize(Transform):
    """(x / 255 - mean) / std per channel, uint8 NHWC -> float32 NCHW: torchvision's ToTensor()
    followed by Normalize(mean, std). mean, std: one value per channel (or one for all), in
    [0, 1] units."""

    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, images):
        return _ops.normalize(images, self.mean, self.std, dtype=precision_storage())

    def eval(self):
        return self


class RandomTransform(Transform):
    """A transform with Philox randomness: a seed and a step counter advanced per batch."""

    def __init__(self, seed=None):
        self.seed = _random.next_seed() if seed is None else int(seed)
        if not 0 <= self.seed < 2 ** 64:
            raise ValueError(f"{type(self).__name__}: seed must be in [0, 2^64), got {seed!r}")
        self.step = 0

    def _last_step(self, step):
        if step is not None:
            return int(step)
        if self.step == 0:
            raise ValueError(f"{type(self).__name__}.params: no batch transformed yet; pass the "
                             f"step (0 for the first batch)")
        return self.step - 1

    def random_state(self):
        return {"seed": self.seed, "step": self.step}

    def set_random_state(self, state):
        self.seed, self.step = int(state["seed"]), int(state["step"])


class RandomCropFlip(RandomTransform):
    """The standard CIFAR-10 augmentation, normalised, in one kernel: torchvision's
    RandomCrop(size, padding=padding) (pad value 0, crop the original size), then
    RandomHorizontalFlip(p=0.5) when `flip` (True, False or a probability), then ToTensor() and
    Normalize(mean, std).

    params(batch_size, step): int [B, 3] crop offsets (row, column) in [0, 2 * padding] and flip
    of call number `step` (default: the last call)."""

    def __init__(self, padding=4, mean=0.0, std=1.0, flip=True, seed=None):
        super().__init__(seed)
        if not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"RandomCropFlip: padding must be a non-negative integer, got "
                             f"{padding!r}")
        self.padding, self.mean, self.std = int(padding), mean, std
        self.flip_probability = _flip_probability(flip, "RandomCropFlip")

    def __call__(self, images):
        out = _ops.random_crop_flip(images, self.mean, self.std, self.padding, seed=self.seed,
                                    stream=_random.stream(self.step),
                                    flip_probability=self.flip_probability,
                                    dtype=precision_storage())
        self.step += 1                        # only once the batch was accepted
        return out

    def params(self, batch_size, step=None):
        return _ops.random_crop_flip_params(batch_size, self.padding, seed=self.seed,
                                            stream=_random.stream(self._last_step(step)),
                                            flip_probability=self.flip_probability)

    def extra_repr(self):
        return (f"padding={self.padding}, mean={self.mean}, std={self.std}, "
                f"flip={self.flip_probability}, seed={self.seed}")


class AffineTransform(RandomTransform):
    """Rotation, zoom, shift and horizontal flip in one kernel (ops.augment.affine_warp), drawn
    from `ranges` (an AffineRanges: shifts in pixels), or with the shifts given as fractions of
    the width and height, `shift_fraction` = ((x low, x high), (y low, y high)), converted to
    pixels for each batch's image size. RandomAffine and ImageDataGenerator build one from
    torchvision's and Keras' parameters; docs/augmentation.md gives the geometry.

    params(batch_size, height, width, step): float [B, 6] angle, zoom x, zoom y, shift x, shift
    y (pixels), flip of call number `step` (default: the last call)."""

    def __init__(self, ranges, shift_fraction=None, interpolation="bilinear",
                 fill_mode="nearest", cval=0.0, mean=0.0, std=1.0, seed=None):
        super().__init__(seed)
        owner = type(self).__name__
        if not isinstance(ranges, AffineRanges):
            raise ValueError(f"{owner}: ranges must be an AffineRanges, got "
                             f"{type(ranges).__name__}")
        self.ranges = ranges.check(owner)
        self.shift_fraction = shift_fraction
        if interpolation not in _ops.INTERPOLATIONS:
            raise ValueError(f"{owner}: interpolation must be one of "
                             f"{', '.join(_ops.INTERPOLATIONS)}, got {interpolation!r}")
        if fill_mode not in _ops.FILL_MODES:
            raise ValueError(f"{owner}: fill_mode must be one of {', '.join(_ops.FILL_MODES)}, "
                             f"got {fill_mode!r}")
        self.interpolation, self.fill_mode, self.cval = interpolation, fill_mode, float(cval)
        self.mean, self.std = mean, std

    def ranges_for(self, height, width):
        """The AffineRanges for images of height x width (shifts in pixels)."""
        if self.shift_fraction is None:
            return self.ranges
        (x_low, x_high), (y_low, y_high) = self.shift_fraction
        return dataclasses.replace(self.ranges, shift_x=(x_low * width, x_high * width),
                                   shift_y=(y_low * height, y_high * height))

    def __call__(self, images):
        _, height, width, _ = images.shape
        out = _ops.affine_warp(images, self.mean, self.std, self.ranges_for(height, width),
                               seed=self.seed, stream=_random.stream(self.step),
                               interpolation=self.interpolation, fill_mode=self.fill_mode,
                               cval=self.cval, dtype=precision_storage())
        self.step += 1                        # only once the batch was accepted
        return out

    def params(self, batch_size, height, width, step=None):
        return _ops.affine_params(batch_size, self.ranges_for(height, width), seed=self.seed,
                                  stream=_random.stream(self._last_step(step)))

    def extra_repr(self):
        return (f"ranges={self.ranges}, shift_fraction={self.shift_fraction}, "
                f"interpolation={self.interpolation!r}, fill_mode={self.fill_mode!r}, "
                f"cval={self.cval}, mean={self.mean}, std={self.std}, seed={self.seed}")


class RandomAffine(AffineTransform):
    """torchvision's RandomAffine(degrees, translate, scale, interpolation, fill), normalised,
    plus a horizontal flip (RandomHorizontalFlip after it) and fill modes beyond constant.

    degrees: d for (-d, d), or (min, max). translate: (a, b) for horizontal shifts in
    (-a W, a W) and vertical in (-b H, b H) pixels; torchvision rounds the drawn shift to whole
    pixels, here it stays fractional. scale: (lo, hi), one magnification for both axes (> 1
    enlarges). interpolation: "nearest" (torchvision's default) or "bilinear". fill: the pixel
    value (0..255) outside the image. Extensions: flip (True = probability 0.5), fill_mode
    ("constant", torchvision's only one, or "nearest", "reflect", "wrap"). Rotation is about the
    image centre; a positive angle turns the content counter-clockwise as displayed
    (torchvision's F.affine turns it clockwise: the same distribution for a symmetric range).
    Not supported: shear, center."""

    def __init__(self, degrees, translate=None, scale=None, *, interpolation="nearest", fill=0.0,
                 fill_mode="constant", flip=False, mean=0.0, std=1.0, seed=None):
        rotation = _pair("degrees", degrees, 0.0, "RandomAffine")
        if translate is not None:
            a, b = (float(v) for v in translate)
            if not (0.0 <= a <= 1.0 and 0.0 <= b <= 1.0):
                raise ValueError(f"RandomAffine: translate values must be in [0, 1], got "
                                 f"{translate!r}")
            shift = ((-a, a), (-b, b))
        else:
            shift = ((0.0, 0.0), (0.0, 0.0))
        zoom = (1.0, 1.0) if scale is None else _pair("scale", scale, 1.0, "RandomAffine")
        if zoom[0] <= 0:
            raise ValueError(f"RandomAffine: scale must be positive, got {scale!r}")
        ranges = AffineRanges(rotation=rotation, zoom_x=zoom, zoom_y=zoom,
                              flip_probability=_flip_probability(flip, "RandomAffine"),
                              same_zoom=True, zoom_is_magnification=True)
        super().__init__(ranges, shift_fraction=shift, interpolation=interpolation,
                         fill_mode=fill_mode, cval=fill, mean=mean, std=std, seed=seed)
        self.degrees, self.translate, self.scale = degrees, translate, scale


class ImageDataGenerator(AffineTransform):
    """Keras' ImageDataGenerator geometric augmentation, as a transform (not a generator):
    rotation_range, width_shift_range, height_shift_range, zoom_range, horizontal_flip,
    fill_mode, cval and interpolation_order with Keras' meanings and defaults, normalised by
    mean and std (Keras' featurewise_center / std_normalization, with given statistics).

    rotation_range r: degrees in (-r, r), about the centre, counter-clockwise for positive.
    width_shift_range f: shifts in (-f W, f W) pixels if f < 1, else in (-f, f) pixels (Keras
    draws whole pixels for an int f, and accepts a list to choose from; here every shift is
    drawn from a continuous interval). height_shift_range: likewise, of the height.
    zoom_range z: [1 - z, 1 + z], or a pair [lower, upper]; zoom x and zoom y are drawn
    independently and, as in Keras, a zoom above 1 zooms out (the source is sampled with that
    step). horizontal_flip: flip half the images, after the warp. fill_mode: "nearest"
    (default), "constant" (cval, in pixel units 0..255), "reflect", "wrap".
    interpolation_order: 1 bilinear (default), 0 nearest. The shift is applied in the output
    frame (the content moves by exactly the drawn pixels); Keras applies it before the rotation
    and zoom, the same for pure shifts.
    """

    def __init__(self, rotation_range=0.0, width_shift_range=0.0, height_shift_range=0.0,
                 zoom_range=0.0, horizontal_flip=False, fill_mode="nearest", cval=0.0,
                 interpolation_order=1, *, mean=0.0, std=1.0, seed=None):
        owner = "ImageDataGenerator"
        for name, value in (("rotation_range", rotation_range),
                            ("width_shift_range", width_shift_range),
                            ("height_shift_range", height_shift_range)):
            if np.ndim(value) != 0 or float(value) < 0:
                raise ValueError(f"{owner}: {name} must be a non-negative number, got {shown(value)}")
        rotation = _pair("rotation_range", rotation_range, 0.0, owner)
        zoom = _pair("zoom_range", zoom_range, 1.0, owner)
        if zoom[0] <= 0:
            raise ValueError(f"{owner}: zoom_range {zoom_range!r} gives zooms in {list(zoom)}; "
                             f"zooms must be positive")
        if interpolation_order not in (0, 1):
            raise ValueError(f"{owner}: interpolation_order must be 0 (nearest) or 1 "
                             f"(bilinear), got {interpolation_order!r}")
        ranges = AffineRanges(rotation=rotation, zoom_x=zoom, zoom_y=zoom,
                              flip_probability=0.5 if horizontal_flip else 0.0)
        super().__init__(ranges, interpolation=("nearest", "bilinear")[interpolation_order],
                         fill_mode=fill_mode, cval=cval, mean=mean, std=std, seed=seed)
        self.rotation_range, self.zoom_range = rotation_range, zoom_range
        self.width_shift_range, self.height_shift_range = width_shift_range, height_shift_range
        self.horizontal_flip = bool(horizontal_flip)

    def ranges_for(self, height, width):
        # Keras: a range below 1 is a fraction of the size, 1 or more a number of pixels.
        def pixels(f, size):
            f = float(f) * size if float(f) < 1 else float(f)
            return (-f, f)
        return dataclasses.replace(self.ranges, shift_x=pixels(self.width_shift_range, width),
                                   shift_y=pixels(self.height_shift_range, height))


class Compose(Transform):
    """Apply transforms in turn: the first receives the uint8 batch, each next one the previous
    output (e.g. an augmentation followed by a float -> float callable of your own).
    random_state() gathers every random member's state; eval() composes their eval()s (a plain
    callable without eval() is kept as it is)."""

    def __init__(self, *transforms):
        if len(transforms) == 1 and isinstance(transforms[0], (list, tuple)):
            transforms = tuple(transforms[0])
        if not transforms:
            raise ValueError("Compose: needs at least one transform")
        self.transforms = list(transforms)

    def __call__(self, images):
        for t in self.transforms:
            images = t(images)
        return images

    def eval(self):
        return Compose([t.eval() if hasattr(t, "eval") else t for t in self.transforms])

    def random_state(self):
        return {"transforms": [t.random_state() if hasattr(t, "random_state") else {}
                               for t in self.transforms]}

    def set_random_state(self, state):
        for t, s in zip(self.transforms, state["transforms"]):
            if hasattr(t, "set_random_state"):
                t.set_random_state(s)

    @property
    def mean(self):
        return self.transforms[0].mean

    @property
    def std(self):
        return self.transforms[0].std

    def extra_repr(self):
        return ", ".join(repr(t) for t in self.transforms)
