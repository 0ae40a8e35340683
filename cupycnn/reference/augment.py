"""Augmentation and normalisation: the specification of kernels/augment.cu.

Every function reads a batch of uint8 images [B, H, W, C] (what the loader holds) and returns
[B, C, H, W] in `dtype` (float32 or float64), normalised per channel:

    out[b, c, y, x] = (v / 255 - mean[c]) / std[c]

where v (0..255) is the pixel, or the resampled value, at (y, x):

    normalize         v = images[b, y, x, c]
    random_crop_flip  pad by `padding` zero pixels, crop H x W at offset (oy, ox) in [0, 2P]^2,
                      then flip horizontally with probability p: torchvision's
                      RandomCrop(H, padding=P) followed by RandomHorizontalFlip(p)
    affine_warp       rotation, zoom, shift and horizontal flip (see `affine_source_coordinates`),
                      bilinear or nearest interpolation, fill_mode for taps outside the image

Random parameters: image b's k-th number is philox.uniform(seed, stream, b * DRAWS + k) (or,
for the crop offsets, an integer from philox.random_words), exactly as the kernels draw them, so
a seed and a stream give the same augmentation on every device. The affine geometry is computed
in float32, one rounded operation at a time in the kernels' order (sin and cos by the polynomial
of `sincos_degrees`), so the kernels pick the same source pixels and the same interpolation
weights bit for bit; only the blend of the taps and the normalisation are done in `dtype`.
"""
from dataclasses import dataclass

import numpy as np

from . import philox

CROP_DRAWS = 3                 # per image: row offset, column offset, flip (augment.cu)
AFFINE_DRAWS = 6               # per image: angle, zoom x, zoom y, shift x, shift y, flip
INTERPOLATIONS = ("nearest", "bilinear")
FILL_MODES = ("constant", "nearest", "reflect", "wrap")
COORDINATE_LIMIT = np.float32(2.0 ** 24)   # source coordinates are clamped to +-this

_F = np.float32


def _hex32(text):
    return _F(float.fromhex(text))       # exactly representable: no double rounding


# sincos_degrees' constants, the same float32 values as the hex literals in augment.cu.
_DEGREE = _hex32("0x1.1df46ap-6")                                      # pi / 180
_SIN = [_hex32(h) for h in ("-0x1.555556p-3", "0x1.111112p-7", "-0x1.a01a02p-13",
                            "0x1.71de3ap-19")]                          # -1/3!, 1/5!, -1/7!, 1/9!
_COS = [_F(-0.5)] + [_hex32(h) for h in ("0x1.555556p-5", "-0x1.6c16c2p-10", "0x1.a01a02p-16",
                                         "-0x1.27e4fcp-22")]            # -1/2!, ..., -1/10!


@dataclass(frozen=True)
class AffineRanges:
    """The intervals the affine parameters are drawn from, uniformly, per image.

    rotation: degrees, counter-clockwise as displayed. zoom_x, zoom_y: the zoom; with
    zoom_is_magnification False (Keras) a zoom z samples the source with step z, so z > 1 shows
    a smaller image (zooms out); with it True (torchvision's scale) the image appears z times
    larger. same_zoom: one draw for both axes (zoom_y ignored). shift_x, shift_y: pixels,
    positive moves the content right / down. flip_probability: horizontal flip after the warp.
    A range (a, a) gives exactly a.
    """
    rotation: tuple = (0.0, 0.0)
    zoom_x: tuple = (1.0, 1.0)
    zoom_y: tuple = (1.0, 1.0)
    shift_x: tuple = (0.0, 0.0)
    shift_y: tuple = (0.0, 0.0)
    flip_probability: float = 0.0
    same_zoom: bool = False
    zoom_is_magnification: bool = False

    def check(self, op):
        """ValueError (naming `op`) unless every range is a finite (low, high) with low <= high,
        zooms positive and the probability in [0, 1]."""
        for name in ("rotation", "zoom_x", "zoom_y", "shift_x", "shift_y"):
            value = getattr(self, name)
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"{op}: {name} must be a pair (low, high), got {value!r}") from None
            if not (np.isfinite(low) and np.isfinite(high) and low <= high):
                raise ValueError(f"{op}: {name} must be finite with low <= high, got {value!r}")
            if name.startswith("zoom") and low <= 0:
                raise ValueError(f"{op}: {name} must be positive, got {value!r}")
        if not 0.0 <= float(self.flip_probability) <= 1.0:
            raise ValueError(f"{op}: flip_probability must be in [0, 1], got "
                             f"{self.flip_probability!r}")
        return self

    def kernel_args(self):
        """The ranges as the kernels take them: ten float32 bounds, the flip probability, the
        two int32 flags."""
        bounds = [_F(v) for name in ("rotation", "zoom_x", "zoom_y", "shift_x", "shift_y")
                  for v in getattr(self, name)]
        return (*bounds, _F(self.flip_probability), np.int32(bool(self.same_zoom)),
                np.int32(bool(self.zoom_is_magnification)))


# ---------------------------------------------------------------------------- normalisation

def channel_values(values, channels):
    """A per-channel float64 vector from a scalar or a sequence of `channels` values."""
    return np.broadcast_to(np.asarray(values, dtype=np.float64).reshape(-1), (channels,))


def _normalise(values, mean, std, dtype):
    """values [B, H, W, C] (0..255, in dtype) -> (values / 255 - mean) / std as [B, C, H, W]."""
    channels = values.shape[-1]
    mean = channel_values(mean, channels).astype(dtype)
    std = channel_values(std, channels).astype(dtype)
    out = (values / dtype.type(255) - mean) / std
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def normalize(images, mean, std, dtype=np.float32):
    """(images / 255 - mean) / std, uint8 [B, H, W, C] -> [B, C, H, W] in dtype: torchvision's
    ToTensor() then Normalize(mean, std)."""
    dtype = np.dtype(dtype)
    return _normalise(images.astype(dtype), mean, std, dtype)


# ----------------------------------------------------------------------- random crop and flip

def _below(seed, stream, index, n):
    """Uniform integers in [0, n): the high word of philox word * n, as philox_below does."""
    words = philox.random_words(seed, stream, index).astype(np.uint64)
    return ((words * np.uint64(n)) >> np.uint64(32)).astype(np.int32)


def random_crop_flip_params(batch, padding, *, seed, stream, flip_probability=0.5):
    """int32 [batch, 3]: each image's crop offset (row, column) in the padded image, in
    [0, 2 * padding], and its flip (0 or 1)."""
    first = np.arange(batch, dtype=np.uint64) * np.uint64(CROP_DRAWS)
    params = np.empty((batch, 3), dtype=np.int32)
    params[:, 0] = _below(seed, stream, first, 2 * padding + 1)
    params[:, 1] = _below(seed, stream, first + np.uint64(1), 2 * padding + 1)
    params[:, 2] = philox.uniform(seed, stream, first + np.uint64(2)) < _F(flip_probability)
    return params


def random_crop_flip(images, mean, std, padding, *, seed, stream, flip_probability=0.5,
                     dtype=np.float32):
    """Pad by `padding` zero pixels (pixel value 0, before normalisation), crop the original
    size at each image's random offset, flip horizontally with probability flip_probability,
    normalise. [B, H, W, C] uint8 -> [B, C, H, W]."""
    dtype = np.dtype(dtype)
    batch, height, width, _ = images.shape
    params = random_crop_flip_params(batch, padding, seed=seed, stream=stream,
                                     flip_probability=flip_probability)
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    x = np.arange(width)
    columns = np.where(params[:, 2:3] == 1, width - 1 - x, x) + params[:, 1:2]   # [B, W]
    rows = np.arange(height) + params[:, 0:1]                                   # [B, H]
    b = np.arange(batch)[:, None, None]
    crops = padded[b, rows[:, :, None], columns[:, None, :]]                    # [B, H, W, C]
    return _normalise(crops.astype(dtype), mean, std, dtype)


# ------------------------------------------------------------------------------ affine warp

def _range(seed, stream, index, bounds):
    """low + u * (high - low) in float32, rounded as the kernel's philox_range."""
    low, high = _F(bounds[0]), _F(bounds[1])
    return low + philox.uniform(seed, stream, index) * (high + -low)


def affine_params(batch, ranges, *, seed, stream):
    """float32 [batch, 6]: each image's angle (degrees), zoom x, zoom y (as drawn), shift x,
    shift y (pixels) and flip (0 or 1)."""
    first = np.arange(batch, dtype=np.uint64) * np.uint64(AFFINE_DRAWS)
    draw = [first + np.uint64(k) for k in range(AFFINE_DRAWS)]
    params = np.empty((batch, 6), dtype=np.float32)
    params[:, 0] = _range(seed, stream, draw[0], ranges.rotation)
    params[:, 1] = _range(seed, stream, draw[1], ranges.zoom_x)
    params[:, 2] = params[:, 1] if ranges.same_zoom else _range(seed, stream, draw[2],
                                                                ranges.zoom_y)
    params[:, 3] = _range(seed, stream, draw[3], ranges.shift_x)
    params[:, 4] = _range(seed, stream, draw[4], ranges.shift_y)
    params[:, 5] = philox.uniform(seed, stream, draw[5]) < _F(ranges.flip_probability)
    return params


def sincos_degrees(degrees):
    """(sin, cos) of float32 angles in degrees, as augment.cu computes them: exact reduction to
    r in [-45, 45] degrees and a count of quarter turns (so multiples of 90 degrees give exact 0
    and +-1), then Taylor polynomials in float32, every operation rounded."""
    degrees = np.asarray(degrees, dtype=np.float32)
    quarter_turns = np.rint(degrees / _F(90))
    r = degrees + -(quarter_turns * _F(90))
    x = r * _DEGREE
    x2 = x * x
    ps = _SIN[2] + x2 * _SIN[3]
    ps = _SIN[1] + x2 * ps
    ps = _SIN[0] + x2 * ps
    sin_r = x + (x * x2) * ps
    pc = _COS[3] + x2 * _COS[4]
    pc = _COS[2] + x2 * pc
    pc = _COS[1] + x2 * pc
    pc = _COS[0] + x2 * pc
    cos_r = _F(1) + x2 * pc
    quadrant = quarter_turns.astype(np.int64) & 3
    s = np.choose(quadrant, [sin_r, cos_r, -sin_r, -cos_r])
    c = np.choose(quadrant, [cos_r, -sin_r, -cos_r, sin_r])
    return s.astype(np.float32), c.astype(np.float32)


def affine_source_coordinates(params, height, width, zoom_is_magnification=False):
    """Where each output pixel samples the source: float32 (xs, ys), each [B, H, W], from the
    params of `affine_params`. Pixel centres are at integer coordinates; c is the image centre
    ((W-1)/2, (H-1)/2):

        xf = W-1-x if flipped else x                 (the flip acts on the warped image)
        (u, v) = (xf - cx - shift_x, y - cy - shift_y)
        (xs, ys) = c + R(angle) (step_x u, step_y v),    R = [[cos, -sin], [sin, cos]]

    with step = zoom, or 1 / zoom for a magnification. In float32, rounded per operation in the
    kernel's order; clamped to +-2^24."""
    params = np.asarray(params, dtype=np.float32)
    angle, zoom_x, zoom_y, shift_x, shift_y, flip = (params[:, k, None, None] for k in range(6))
    step_x = _F(1) / zoom_x if zoom_is_magnification else zoom_x
    step_y = _F(1) / zoom_y if zoom_is_magnification else zoom_y
    s, c = sincos_degrees(angle)
    a, b, cc, d = c * step_x, -(s * step_y), s * step_x, c * step_y
    centre_x, centre_y = _F(0.5) * _F(width - 1), _F(0.5) * _F(height - 1)
    origin_x, origin_y = centre_x + shift_x, centre_y + shift_y
    x = np.arange(width, dtype=np.float32)[None, None, :]
    y = np.arange(height, dtype=np.float32)[None, :, None]
    u = np.where(flip != 0, _F(width - 1) - x, x) + -origin_x                   # [B, 1, W]
    v = y + -origin_y                                                           # [B, H, 1]
    xs = centre_x + (a * u + b * v)
    ys = centre_y + (cc * u + d * v)
    return (np.clip(xs, -COORDINATE_LIMIT, COORDINATE_LIMIT),
            np.clip(ys, -COORDINATE_LIMIT, COORDINATE_LIMIT))


def fill_index(i, n, fill_mode):
    """Integer indices along an axis of n pixels after the fill mode: in [0, n), or -1 where the
    tap reads cval (constant). Keras' and scipy.ndimage's modes; as NumPy's np.pad modes:
    constant = 'constant', nearest = 'edge', reflect = 'symmetric' (edge pixel repeated:
    dcba|abcd|dcba), wrap = 'wrap'."""
    i = np.asarray(i, dtype=np.int64)
    if fill_mode == "constant":
        return np.where((i >= 0) & (i < n), i, -1)
    if fill_mode == "nearest":
        return np.clip(i, 0, n - 1)
    if fill_mode == "reflect":
        m = np.mod(i, 2 * n)
        return np.where(m < n, m, 2 * n - 1 - m)
    if fill_mode == "wrap":
        return np.mod(i, n)
    raise ValueError(f"fill_mode must be one of {', '.join(FILL_MODES)}, got {fill_mode!r}")


def _gather(images, rows, columns, cval, dtype):
    """images[b, rows, columns, :] in dtype, cval where a row or column index is -1."""
    b = np.arange(images.shape[0])[:, None, None]
    outside = (rows < 0) | (columns < 0)
    values = images[b, np.maximum(rows, 0), np.maximum(columns, 0)].astype(dtype)
    values[outside] = dtype.type(cval)
    return values


def affine_warp(images, mean, std, ranges, *, seed, stream, interpolation="bilinear",
                fill_mode="nearest", cval=0.0, dtype=np.float32):
    """Rotate, zoom, shift and flip each image by its random parameters (see `affine_params`
    and `affine_source_coordinates`), resample, normalise. [B, H, W, C] uint8 -> [B, C, H, W].

    nearest: the pixel at (floor(xs + 0.5), floor(ys + 0.5)). bilinear: x0 = floor(xs),
    fx = xs - x0 (likewise y), the four taps (x0 | x0+1, y0 | y0+1) weighted
    (1-fx | fx) * (1-fy | fy), the weights in float32. Taps outside the image follow fill_mode
    (`fill_index`); constant reads cval, a pixel value in 0..255, normalised like the image."""
    dtype = np.dtype(dtype)
    batch, height, width, _ = images.shape
    params = affine_params(batch, ranges, seed=seed, stream=stream)
    xs, ys = affine_source_coordinates(params, height, width, ranges.zoom_is_magnification)
    if interpolation == "nearest":
        columns = fill_index(np.floor(xs + _F(0.5)), width, fill_mode)
        rows = fill_index(np.floor(ys + _F(0.5)), height, fill_mode)
        values = _gather(images, rows, columns, cval, dtype)
    elif interpolation == "bilinear":
        x0, y0 = np.floor(xs), np.floor(ys)
        fx, fy = xs - x0, ys - y0                       # exact fractional parts, float32
        weights_x, weights_y = (_F(1) - fx, fx), (_F(1) - fy, fy)
        x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
        values = np.zeros(images.shape, dtype=dtype)
        for j in range(2):
            rows = fill_index(y0 + j, height, fill_mode)
            for i in range(2):
                columns = fill_index(x0 + i, width, fill_mode)
                weight = (weights_y[j] * weights_x[i]).astype(dtype)[..., None]
                values += weight * _gather(images, rows, columns, cval, dtype)
    else:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                         f"{interpolation!r}")
    return _normalise(values, mean, std, dtype)
