"""Augmentation and normalisation: launches kernels/augment.cu; specified by reference/augment.py.

    out = normalize(images, mean, std)                           # uint8 [B, H, W, C] in,
    out = random_crop_flip(images, mean, std, 4, seed=s, stream=k)   # float32 [B, C, H, W] out
    out = affine_warp(images, mean, std, AffineRanges(rotation=(-15, 15)), seed=s, stream=k)

mean and std are per-channel (a scalar or C values) in the [0, 1] scale of v / 255. `seed` and
`stream` (both integers in [0, 2^64)) key the per-image random parameters: the same pair gives
the same augmentation on cuda, sim and numpy. `random_crop_flip_params` and `affine_params`
return the parameters those draws give, without touching any image.
"""
import numpy as np

from .. import devices as _device
from ..limits import GRID_YZ_MAX
from ..reference import augment as reference
from ..reference.augment import AffineRanges, FILL_MODES, INTERPOLATIONS  # noqa: F401
from ..runtime import ceil_div, get_kernel
from ._storage import BF16, encode
from ._check import check_arrays, shown
from ._launch import kernel_constants

_K = kernel_constants("augment")
AUGMENT_THREADS = _K["AUGMENT_THREADS"]      # output pixels per block
PARAMS_THREADS = _K["PARAMS_THREADS"]        # images per block of the *_params kernels
MAX_BATCH = GRID_YZ_MAX                      # the batch runs along gridDim.y
_INTERPOLATION = {"nearest": _K["INTERP_NEAREST"], "bilinear": _K["INTERP_BILINEAR"]}
_FILL_MODE = {mode: _K[f"FILL_{mode.upper()}"]
              for mode in ("constant", "nearest", "reflect", "wrap")}
_UINT64_LIMIT = 2 ** 64


def _check_images(op, images):
    sizes = check_arrays(op, dtypes=(np.uint8,), images=(images, ("B", "H", "W", "C")))
    for name in ("H", "W", "C"):
        if sizes[name] < 1:
            raise ValueError(f"{op}: images must have shape (B, H, W, C) with H, W, C >= 1, "
                             f"got {tuple(images.shape)}")
    if sizes["H"] * sizes["W"] * sizes["C"] >= 2 ** 31:
        raise ValueError(f"{op}: an image of {tuple(images.shape[1:])} has 2^31 or more values; "
                         f"the kernels index one image with 32-bit integers")
    if _device.runs_kernels() and sizes["B"] > MAX_BATCH:
        raise ValueError(f"{op}: batches of at most {MAX_BATCH} images on the "
                         f"{_device.device()} device (the grid's y size), got {sizes['B']}")
    return sizes


def _check_normalisation(op, mean, std, channels):
    """mean and std as float64 [channels] vectors; ValueError naming the op unless each is a
    scalar or `channels` finite values, std positive."""
    vectors = []
    for name, values in (("mean", mean), ("std", std)):
        try:
            v = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"{op}: {name} must be a number or {channels} numbers, got "
                             f"{values!r}") from None
        if v.size not in (1, channels):
            raise ValueError(f"{op}: {name} must have shape (1,) or (C={channels},) for images "
                             f"of {channels} channels, got ({v.size},)")
        if not np.isfinite(v).all():
            raise ValueError(f"{op}: {name} must be finite, got {values!r}")
        vectors.append(np.broadcast_to(v, (channels,)))
    if (vectors[1] <= 0).any():
        raise ValueError(f"{op}: std must be positive, got {std!r}")
    return vectors


def _check_dtype(op, dtype):
    """The output dtype: float32 (float64 too on numpy), or BF16 storage (ops._storage.BF16)."""
    dtype = np.dtype(dtype)
    allowed = ((np.float32,) if _device.runs_kernels() else (np.float32, np.float64)) + (BF16,)
    if dtype not in [np.dtype(a) for a in allowed]:
        names = " or ".join("bf16 (uint16)" if np.dtype(a) == BF16 else np.dtype(a).name
                            for a in allowed)
        raise ValueError(f"{op}: dtype must be {names} on the {_device.device()} device, got "
                         f"{dtype}")
    return dtype


def _on_numpy(fn, *args, dtype, **kwargs):
    """The reference, in float32 then rounded when the output is BF16."""
    if dtype == BF16:
        return encode(fn(*args, dtype=np.float32, **kwargs))
    return fn(*args, dtype=dtype, **kwargs)


def _kernel(name, dtype):
    return name + ("_bf16" if dtype == BF16 else "")


def _check_key(op, seed, stream):
    for name, value in (("seed", seed), ("stream", stream)):
        if not isinstance(value, (int, np.integer)) or not 0 <= int(value) < _UINT64_LIMIT:
            raise ValueError(f"{op}: {name} must be an integer in [0, 2^64), got {shown(value)}")
    return np.uint64(seed), np.uint64(stream)


def _check_probability(op, name, p):
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{op}: {name} must be in [0, 1], got {shown(p)}")


def _check_padding(op, padding):
    if not isinstance(padding, (int, np.integer)) or not 0 <= padding < 2 ** 20:
        raise ValueError(f"{op}: padding must be an integer in [0, 2^20), got {padding!r}")


_coefficients = {}


def _scale_shift(mean, std):
    """Device float32 arrays scale = 1 / (255 std), shift = -mean / std (computed in float64),
    so that the kernels normalise with one multiply-add; cached per device and values."""
    key = (_device.device(), tuple(mean), tuple(std))
    pair = _coefficients.get(key)
    if pair is None:
        pair = (_device.asarray((1.0 / (255.0 * std)).astype(np.float32)),
                _device.asarray((-mean / std).astype(np.float32)))
        _coefficients[key] = pair
    return pair


def _launch_image_kernel(name, images, mean, std, sizes, dtype, *args):
    """The [B, C, H, W] output (float32 or BF16: `dtype`) of augment.cu's kernel `name` (its
    _bf16 entry point for BF16), launched over every output pixel with (images, out, scale,
    shift, H, W, C) and then `args`."""
    out = _device.empty((sizes["B"], sizes["C"], sizes["H"], sizes["W"]), dtype)
    if sizes["B"]:
        scale, shift = _scale_shift(mean, std)
        get_kernel("augment", _kernel(name, dtype))(
            (ceil_div(sizes["H"] * sizes["W"], AUGMENT_THREADS), sizes["B"]), (AUGMENT_THREADS,),
            (images, out, scale, shift, np.int32(sizes["H"]), np.int32(sizes["W"]),
             np.int32(sizes["C"])) + args)
    return out


def normalize(images, mean, std, dtype=np.float32):
    """(images / 255 - mean) / std: uint8 [B, H, W, C] -> [B, C, H, W] float32 (float64 too on
    numpy). torchvision's ToTensor() then Normalize(mean, std)."""
    op = "normalize"
    sizes = _check_images(op, images)
    mean, std = _check_normalisation(op, mean, std, sizes["C"])
    dtype = _check_dtype(op, dtype)
    if not _device.runs_kernels():
        return _on_numpy(reference.normalize, images, mean, std, dtype=dtype)
    return _launch_image_kernel("normalize", images, mean, std, sizes, dtype)


def random_crop_flip_params(batch, padding, *, seed, stream, flip_probability=0.5):
    """int32 [batch, 3] on the current device: per image the crop offset (row, column) in the
    padded image, each in [0, 2 * padding], and the flip (0 or 1) that random_crop_flip with the
    same arguments applies."""
    op = "random_crop_flip_params"
    if not isinstance(batch, (int, np.integer)) or batch < 0:
        raise ValueError(f"{op}: batch must be a non-negative integer, got {batch!r}")
    _check_padding(op, padding)
    _check_probability(op, "flip_probability", flip_probability)
    seed64, stream64 = _check_key(op, seed, stream)
    if not _device.runs_kernels():
        return reference.random_crop_flip_params(batch, padding, seed=seed, stream=stream,
                                                 flip_probability=flip_probability)
    params = _device.empty((batch, 3), np.int32)
    if batch:
        get_kernel("augment", "random_crop_flip_params")(
            (ceil_div(batch, PARAMS_THREADS),), (PARAMS_THREADS,),
            (seed64, stream64, np.int32(batch), np.int32(padding), np.float32(flip_probability),
             params))
    return params


def random_crop_flip(images, mean, std, padding, *, seed, stream, flip_probability=0.5,
                     dtype=np.float32):
    """Pad each image by `padding` zero pixels (value 0 before normalisation), crop the original
    size at a random offset, flip horizontally with probability flip_probability, normalise:
    torchvision's RandomCrop(size, padding) + RandomHorizontalFlip(p) + ToTensor() +
    Normalize(mean, std). uint8 [B, H, W, C] -> [B, C, H, W]."""
    op = "random_crop_flip"
    sizes = _check_images(op, images)
    mean, std = _check_normalisation(op, mean, std, sizes["C"])
    dtype = _check_dtype(op, dtype)
    _check_padding(op, padding)
    _check_probability(op, "flip_probability", flip_probability)
    seed64, stream64 = _check_key(op, seed, stream)
    if not _device.runs_kernels():
        return _on_numpy(reference.random_crop_flip, images, mean, std, padding, seed=seed,
                         stream=stream, flip_probability=flip_probability, dtype=dtype)
    return _launch_image_kernel("random_crop_flip", images, mean, std, sizes, dtype,
                                np.int32(padding), np.float32(flip_probability), seed64, stream64)


def _check_ranges(op, ranges):
    if not isinstance(ranges, AffineRanges):
        raise ValueError(f"{op}: ranges must be a cupycnn.ops.augment.AffineRanges, got "
                         f"{type(ranges).__name__}")
    return ranges.check(op)


def affine_params(batch, ranges, *, seed, stream):
    """float32 [batch, 6] on the current device: per image the angle (degrees), zoom x, zoom y,
    shift x, shift y (pixels) and flip (0 or 1) that affine_warp with the same ranges, seed and
    stream applies."""
    op = "affine_params"
    if not isinstance(batch, (int, np.integer)) or batch < 0:
        raise ValueError(f"{op}: batch must be a non-negative integer, got {batch!r}")
    _check_ranges(op, ranges)
    seed64, stream64 = _check_key(op, seed, stream)
    if not _device.runs_kernels():
        return reference.affine_params(batch, ranges, seed=seed, stream=stream)
    params = _device.empty((batch, 6), np.float32)
    if batch:
        get_kernel("augment", "affine_params")(
            (ceil_div(batch, PARAMS_THREADS),), (PARAMS_THREADS,),
            (seed64, stream64, np.int32(batch), *ranges.kernel_args(), params))
    return params


def affine_warp(images, mean, std, ranges, *, seed, stream, interpolation="bilinear",
                fill_mode="nearest", cval=0.0, dtype=np.float32):
    """Rotate, zoom, shift and flip each image by parameters drawn from `ranges` (an
    AffineRanges), resample with `interpolation` ("bilinear" or "nearest"), fill taps outside
    the image by `fill_mode` ("constant" with cval, a pixel value in 0..255; "nearest";
    "reflect"; "wrap"), normalise. uint8 [B, H, W, C] -> [B, C, H, W]. The geometry is given in
    reference/augment.py (affine_source_coordinates); docs/augmentation.md maps Keras' and
    torchvision's parameters onto it."""
    op = "affine_warp"
    sizes = _check_images(op, images)
    mean, std = _check_normalisation(op, mean, std, sizes["C"])
    dtype = _check_dtype(op, dtype)
    _check_ranges(op, ranges)
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"{op}: interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                         f"{interpolation!r}")
    if fill_mode not in _FILL_MODE:
        raise ValueError(f"{op}: fill_mode must be one of {', '.join(FILL_MODES)}, got "
                         f"{fill_mode!r}")
    if not np.isfinite(float(cval)):
        raise ValueError(f"{op}: cval must be finite, got {cval!r}")
    seed64, stream64 = _check_key(op, seed, stream)
    if not _device.runs_kernels():
        return _on_numpy(reference.affine_warp, images, mean, std, ranges, seed=seed,
                         stream=stream, interpolation=interpolation, fill_mode=fill_mode,
                         cval=cval, dtype=dtype)
    return _launch_image_kernel("affine_warp", images, mean, std, sizes, dtype,
                                *ranges.kernel_args(), np.int32(_INTERPOLATION[interpolation]),
                                np.int32(_FILL_MODE[fill_mode]), np.float32(cval), seed64,
                                stream64)
