"""Decoding encoded images on the host, and the per-image transforms of streamed datasets.

Streamed datasets (cupycnn.data.stream, .shards, .tfrecord) hold images encoded (JPEG, PNG) and
decode each one when a batch needs it, in the loader's worker processes, straight into the
batch's shared memory. What a worker does to one image is a *decode transform*:

    RandomResizedCrop(224)          torchvision's RandomResizedCrop(224) + RandomHorizontalFlip()
    ResizeCenterCrop(256, 224)      torchvision's Resize(256) + CenterCrop(224) (evaluation)
    Resize((h, w))                  stretch to exactly (h, w) (ImageFolder(size=...))
    Decode((h, w))                  decode only; every image must already be h x w

Each returns uint8 [h, w, 3] RGB; the normalisation and any device augmentation follow on the
device (the Loader's `transform`, e.g. `Normalize(mean, std)`), on uint8 batches: 4x less host
memory and host-to-device traffic than float32.

Decoders. JPEGs are decoded by simplejpeg (libjpeg-turbo) when it is installed, otherwise by
Pillow (whose wheels bundle libjpeg-turbo too: with the same IDCT and upsampling the two give
the same pixels; tested). Other formats go to Pillow. Images are converted to RGB as
torchvision's default loader does (`Image.open(f).convert("RGB")`).

Decode-time downscaling. A JPEG can be decoded at 1/2, 1/4 or 1/8 of its size by scaling the
DCT, several times faster than decoding it whole and shrinking it after. With `downscale=True`
(the default) a transform first works out its crop box on the full-size image (from the JPEG
header), then decodes at the smallest scale that still leaves the box at least as many pixels
as the output in each direction, and maps the box onto the smaller image. The output then
differs from torchvision's in the last bits of the antialiasing only, and only for images more
than twice the size the crop needs (a 500 x 375 ImageNet photo cropped to 224 never is; a 12-
megapixel photo always is). downscale=False decodes every image whole: the pixels torchvision
gives for the same crop box (tested against torchvision's functional ops).

Random parameters come from Philox (cupycnn.reference.philox), keyed by the transform's seed and
counted by (the sample's draw number, the epoch, the attempt): the same seed gives the same
crops in every run, whatever the number of workers, ranks or the order in which workers finish.
"""
import io
import math

import numpy as np

from ..reference.philox import philox4x32_10
from ._optional import require
from .folder import BadImageError

JPEG_MAGIC = b"\xff\xd8\xff"
MAX_PIXELS = 200_000_000        # refuse decompression bombs (Pillow's own limit is 179 Mpx)
ATTEMPTS = 10                   # torchvision's RandomResizedCrop tries 10 boxes, then falls back


def _pillow():
    return require("PIL.Image", "Pillow", "cupycnn.data decoding")


def _simplejpeg():
    try:
        import simplejpeg
        return simplejpeg
    except ImportError:
        return None


def jpeg_decoder():
    """The name of the JPEG decoder in use: "simplejpeg" where installed, else "pillow"."""
    return "simplejpeg" if _simplejpeg() is not None else "pillow"


def _bad(name, error):
    return BadImageError(f"cannot read the image {name}: {type(error).__name__}: {error}")


def image_size(data, name="<bytes>"):
    """(height, width) of an encoded image, from its header (nothing decoded)."""
    sj = _simplejpeg() if data[:3] == JPEG_MAGIC else None
    if sj is not None:
        try:
            h, w, _, _ = sj.decode_jpeg_header(data)
            return int(h), int(w)
        except ValueError:
            pass                       # let Pillow try (and name the error)
    Image = _pillow()
    try:
        with Image.open(io.BytesIO(data)) as image:
            w, h = image.size
            return int(h), int(w)
    except Exception as e:
        raise _bad(name, e) from None


def decode(data, name="<bytes>", min_size=None, decoder="auto"):
    """uint8 [H, W, 3] RGB from encoded bytes. min_size (h, w): a JPEG may be decoded at a
    reduced scale (1/2, 1/4, 1/8; only when at least 1/2 fits) as long as it stays at least
    h x w. decoder: "auto",
    "simplejpeg" or "pillow". BadImageError naming `name` when the bytes are not a readable
    image."""
    if decoder not in ("auto", "simplejpeg", "pillow"):
        raise ValueError(f"decode: decoder must be 'auto', 'simplejpeg' or 'pillow', got "
                         f"{decoder!r}")
    min_h, min_w = (0, 0) if min_size is None else (int(min_size[0]), int(min_size[1]))
    is_jpeg = data[:3] == JPEG_MAGIC
    sj = _simplejpeg() if (is_jpeg and decoder != "pillow") else None
    if decoder == "simplejpeg" and sj is None:
        raise ImportError("decode: decoder='simplejpeg' needs simplejpeg (pip install "
                          "simplejpeg)")
    if sj is not None:
        try:
            h, w, colorspace, _ = sj.decode_jpeg_header(data)
            if h * w > MAX_PIXELS:
                raise ValueError(f"{w}x{h} pixels is over the limit of {MAX_PIXELS}")
            if colorspace in ("RGB", "YCbCr", "Gray"):
                if min(h / max(min_h, 1), w / max(min_w, 1)) < 2:
                    return sj.decode_jpeg(data, colorspace="RGB")   # whole: 7/8 etc. is slower
                return sj.decode_jpeg(data, colorspace="RGB", min_height=min_h,
                                      min_width=min_w, min_factor=2)
        except ValueError as e:
            if "over the limit" in str(e):
                raise _bad(name, e) from None
            # CMYK/YCCK and anything libjpeg-turbo refuses strictly: Pillow has the last word
    Image = _pillow()
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size[0] * image.size[1] > MAX_PIXELS:
                raise ValueError(f"{image.size[0]}x{image.size[1]} pixels is over the limit "
                                 f"of {MAX_PIXELS}")
            if is_jpeg and (min_h or min_w):
                image.draft("RGB", (max(min_w, 1), max(min_h, 1)))
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as e:     # OSError (truncated), SyntaxError, ValueError, bomb errors
        raise _bad(name, e) from None


# --------------------------------------------------------------------------- geometry

def _pair(value, what):
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{what} must be a positive int or (height, width), got {value}")
    return value


_M0, _M1, _W0, _W1, _MASK = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85, 0xFFFFFFFF


def philox_scalar(counter, key):
    """Philox4x32-10 of one counter (4 words) and key (2 words), in Python integers: the same
    words as cupycnn.reference.philox.philox4x32_10, without NumPy's per-call cost."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(10):
        p0, p1 = _M0 * c0, _M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & _MASK, (p0 >> 32) ^ c3 ^ k1, p0 & _MASK
        k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
    return c0, c1, c2, c3


class _LazyRows:
    """rows[a] computed when first asked (len ATTEMPTS)."""

    def __init__(self, make):
        self.make, self.cache = make, {}

    def __len__(self):
        return ATTEMPTS

    def __getitem__(self, a):
        if a not in self.cache:
            self.cache[a] = self.make(a)
        return self.cache[a]


def random_resized_crop_box(height, width, uniforms, scale=(0.08, 1.0),
                            ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """torchvision's RandomResizedCrop.get_params, with its random numbers given: `uniforms`
    [ATTEMPTS, 4] in [0, 1) (per attempt: the area, the log aspect ratio, the top, the left).
    Returns (top, left, h, w).

    As torchvision: up to 10 attempts of target_area = area * U(scale) and aspect =
    exp(U(log ratio)) (both drawn in float32, as torch.empty(1).uniform_ is), w =
    round(sqrt(target_area * aspect)), h = round(sqrt(target_area / aspect)); the first that
    fits gives top = randint(0, height - h + 1) and left = randint(0, width - w + 1), here
    floor(U * n). None fits: the centre crop of the largest box within the ratio range."""
    area = height * width
    lo, hi = np.float32(scale[0]), np.float32(scale[1])
    log_lo, log_hi = np.log(np.float32(ratio[0])), np.log(np.float32(ratio[1]))
    for a in range(len(uniforms)):
        u = np.asarray(uniforms[a], dtype=np.float32)
        target_area = area * float(lo + (hi - lo) * u[0])
        aspect = float(np.exp(np.float32(log_lo + (log_hi - log_lo) * u[1])))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(float(u[2]) * (height - h + 1)), height - h)
            left = min(int(float(u[3]) * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_shape(height, width, short):
    """torchvision's Resize(short) on an image of height x width: the short side becomes
    `short`, the long one int(short * long / short_side). Returns (new_h, new_w)."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def center_crop_box(height, width, size):
    """torchvision's CenterCrop(size) on height x width: (top, left, h, w), the corner at
    int(round((side - size) / 2))."""
    h, w = size
    return int(round((height - h) / 2.0)), int(round((width - w) / 2.0)), h, w


# ------------------------------------------------------------------ decode transforms

class DecodeTransform:
    """What a worker does to one encoded image: decode it and make it `shape` (h, w, 3).

    Subclasses define `plan(height, width, draw, epoch)` -> (box, resize, crop, flip) for an
    image of height x width: a box (top, left, h, w) cut from the full-size image first (or
    None), the size (h, w) the result is resized to (or None), a box cut from that after (or
    None), and whether to flip left-right. `random` says whether the plan depends on the draw
    number and the epoch."""

    random = False
    shape = None               # (h, w, 3)
    downscale = False
    decoder = "auto"
    _needs_size = True         # plan() needs the size before decoding (from the header)

    def plan(self, height, width, draw, epoch):
        raise NotImplementedError

    def __call__(self, data, name="<bytes>", draw=0, epoch=0, out=None):
        """Decode `data` and transform it into `out` (uint8 [h, w, 3], e.g. a row of a batch
        in shared memory) or a new array, which is returned."""
        if self._needs_size:
            height, width = image_size(data, name)
            box, resize, crop, flip = self.plan(height, width, draw, epoch)
            min_size = None
            if self.downscale and resize is not None:
                bh, bw = (box[2], box[3]) if box is not None else (height, width)
                min_size = (math.ceil(height * resize[0] / bh), math.ceil(width * resize[1] / bw))
            pixels = decode(data, name, min_size, self.decoder)
            if pixels.shape[:2] != (height, width):
                if min_size is None:        # the header lied about the size
                    raise BadImageError(f"cannot read the image {name}: its header says "
                                        f"{width}x{height}, it decodes to {pixels.shape[1]}x"
                                        f"{pixels.shape[0]}")
                if box is not None:         # decoded at a reduced scale: map the box onto it
                    sy, sx = pixels.shape[0] / height, pixels.shape[1] / width
                    top, left, bh, bw = box
                    t, b = int(round(top * sy)), min(int(round((top + bh) * sy)), pixels.shape[0])
                    l, r = int(round(left * sx)), min(int(round((left + bw) * sx)), pixels.shape[1])
                    box = (t, l, max(1, b - t), max(1, r - l))
        else:
            pixels = decode(data, name, None, self.decoder)
            box, resize, crop, flip = self.plan(pixels.shape[0], pixels.shape[1], draw, epoch)
        if box is not None:
            top, left, bh, bw = box
            pixels = pixels[top:top + bh, left:left + bw]
        if resize is not None and pixels.shape[:2] != tuple(resize):
            Image = _pillow()
            image = Image.fromarray(np.ascontiguousarray(pixels))
            pixels = np.asarray(image.resize((resize[1], resize[0]), Image.BILINEAR))
        if crop is not None:
            top, left, bh, bw = crop
            pixels = pixels[top:top + bh, left:left + bw]
        if self.shape is not None and pixels.shape != self.shape:
            raise BadImageError(f"cannot use the image {name}: it is {pixels.shape[1]}x"
                                f"{pixels.shape[0]}, every image must be {self.shape[1]}x"
                                f"{self.shape[0]} (give the dataset a transform that resizes, "
                                f"e.g. Resize or ResizeCenterCrop)")
        if flip:
            pixels = pixels[:, ::-1]
        if out is None:
            return np.ascontiguousarray(pixels)
        out[...] = pixels
        return out


class RandomResizedCrop(DecodeTransform):
    """torchvision's RandomResizedCrop(size, scale, ratio) (bilinear, antialiased as Pillow
    resizes) followed by RandomHorizontalFlip(flip): the ImageNet training transform.
    `seed` keys the Philox stream (default: drawn from cupycnn.random, so manual_seed fixes
    it). params(height, width, draw, epoch) gives the crop box and flip of one draw."""

    random = True

    def __init__(self, size=224, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), flip=0.5,
                 seed=None, downscale=True, decoder="auto"):
        from .. import random as _random
        self.size = _pair(size, "RandomResizedCrop: size")
        self.scale, self.ratio = tuple(float(s) for s in scale), tuple(float(r) for r in ratio)
        if not (0 < self.scale[0] <= self.scale[1] and 0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"RandomResizedCrop: scale and ratio must be (low, high) with "
                             f"0 < low <= high, got scale={scale}, ratio={ratio}")
        self.flip = 0.5 if flip is True else (0.0 if flip is False else float(flip))
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"RandomResizedCrop: flip must be a probability, got {flip!r}")
        self.seed = _random.next_seed() if seed is None else int(seed)
        self.shape = (*self.size, 3)
        self.downscale, self.decoder = bool(downscale), decoder

    def uniforms(self, draw, epoch):
        """float64 [ATTEMPTS + 1, 4] in [0, 1): the Philox words of counter (draw's low and
        high 32 bits, epoch, attempt) under key seed, times 2^-32; the last row's first value
        decides the flip."""
        draw = int(draw)
        counter = np.zeros((ATTEMPTS + 1, 4), dtype=np.uint32)
        counter[:, 0], counter[:, 1] = draw & 0xFFFFFFFF, draw >> 32
        counter[:, 2], counter[:, 3] = int(epoch), np.arange(ATTEMPTS + 1)
        key = np.array([self.seed & 0xFFFFFFFF, self.seed >> 32], dtype=np.uint32)
        return philox4x32_10(counter, key).astype(np.float64) * 2.0 ** -32

    def _row(self, draw, epoch, attempt):
        """Row `attempt` of uniforms(draw, epoch), by the scalar Philox (one image at a time,
        only the attempts it needs: torchvision's loop usually stops at the first)."""
        words = philox_scalar((draw & 0xFFFFFFFF, draw >> 32, int(epoch), attempt),
                              (self.seed & 0xFFFFFFFF, self.seed >> 32))
        return [w * 2.0 ** -32 for w in words]

    def params(self, height, width, draw, epoch):
        """((top, left, h, w), flip) for draw number `draw` of `epoch`."""
        draw = int(draw)
        rows = _LazyRows(lambda a: self._row(draw, epoch, a))
        box = random_resized_crop_box(height, width, rows, self.scale, self.ratio)
        return box, bool(self._row(draw, epoch, ATTEMPTS)[0] < self.flip)

    def plan(self, height, width, draw, epoch):
        box, flip = self.params(height, width, draw, epoch)
        return box, self.size, None, flip

    def __repr__(self):
        return (f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio="
                f"{tuple(round(r, 4) for r in self.ratio)}, flip={self.flip}, seed={self.seed}, "
                f"downscale={self.downscale})")


class ResizeCenterCrop(DecodeTransform):
    """torchvision's Resize(resize) + CenterCrop(size): the short side to `resize` (the long
    one in proportion), then the centre `size` cut out. The ImageNet evaluation transform
    (256, 224). resize=None: resize so the short side equals the crop's longer side
    (Resize(s) + CenterCrop(s), what ImageFolder(crop=True) does)."""

    def __init__(self, resize=256, size=224, downscale=True, decoder="auto"):
        self.size = _pair(size, "ResizeCenterCrop: size")
        self.resize = max(self.size) if resize is None else int(resize)
        if self.resize < max(self.size):
            raise ValueError(f"ResizeCenterCrop: resize ({self.resize}) must be at least the "
                             f"crop size {self.size}")
        self.shape = (*self.size, 3)
        self.downscale, self.decoder = bool(downscale), decoder

    def plan(self, height, width, draw, epoch):
        new_h, new_w = resize_shape(height, width, self.resize)
        return None, (new_h, new_w), center_crop_box(new_h, new_w, self.size), False

    def __repr__(self):
        return (f"ResizeCenterCrop(resize={self.resize}, size={self.size}, "
                f"downscale={self.downscale})")


class Resize(DecodeTransform):
    """Stretch every image to exactly `size` (h, w), bilinear (what ImageFolder(size=...)
    does)."""

    def __init__(self, size, downscale=True, decoder="auto"):
        self.size = _pair(size, "Resize: size")
        self.shape = (*self.size, 3)
        self.downscale, self.decoder = bool(downscale), decoder

    def plan(self, height, width, draw, epoch):
        return None, self.size, None, False

    def __repr__(self):
        return f"Resize(size={self.size}, downscale={self.downscale})"


class Decode(DecodeTransform):
    """Decode only: every image must already be `size` (h, w) (an error naming the file
    otherwise). size=None: the size of the dataset's first image."""

    _needs_size = False

    def __init__(self, size=None, decoder="auto"):
        self.size = None if size is None else _pair(size, "Decode: size")
        self.shape = None if size is None else (*self.size, 3)
        self.decoder = decoder

    def plan(self, height, width, draw, epoch):
        return None, None, None, False

    def __repr__(self):
        return f"Decode(size={self.size})"
