"""A synthetic image-classification task of any size and shape, made from a seed, no files.

Each class has a pattern: per channel, a sum of PATTERN_WAVES plane waves of low integer
frequency with random phases and amplitudes, scaled to [0, 1]. An image of class c is that
pattern with a random contrast and brightness, plus Gaussian pixel noise:

    image = 255 * clip(0.5 + contrast * (pattern_c - 0.5) + brightness + noise * N(0, 1), 0, 1)

contrast ~ U(0.5, 1), brightness ~ U(-0.1, 0.1), rounded to uint8. The classes differ in their
spatial patterns and colours: by default an easy task on purpose (a linear classifier reaches
about 100% at 8x8 and above), so that a network that trains correctly learns it in a few steps
and one that does not stands out, and benchmarks have something real to fit.

Harder tasks, for comparisons that a saturated accuracy would hide (benchmarks/
precision_training.py): `similarity` s blends every class pattern with one pattern shared by all
classes, pattern_c = (1 - s) own_c + s shared, which shrinks the differences between classes by
1 - s against the same noise, contrast and brightness; and a larger `noise`.
"""
import numpy as np

from .base import ArrayDataset

PATTERN_WAVES = 3
MAX_FREQUENCY = 3            # cycles across the image, per axis
CONTRAST = (0.5, 1.0)
BRIGHTNESS = (-0.1, 0.1)
CHUNK = 4096                 # images made at a time (bounds the float32 working memory)


def _waves(rng, shape, count):
    """float64 [count, H, W, C] in [0, 1]: per pattern and channel, PATTERN_WAVES plane waves."""
    h, w, c = shape
    y = (np.arange(h) / h)[:, None]
    x = (np.arange(w) / w)[None, :]
    patterns = np.zeros((count, h, w, c), np.float64)
    for k in range(count):
        for ch in range(c):
            fy = rng.integers(-MAX_FREQUENCY, MAX_FREQUENCY + 1, PATTERN_WAVES)
            fx = rng.integers(0, MAX_FREQUENCY + 1, PATTERN_WAVES)
            fx[(fx == 0) & (fy == 0)] = 1          # no constant "wave"
            phase = rng.uniform(0, 2 * np.pi, PATTERN_WAVES)
            amplitude = rng.uniform(0.5, 1.0, PATTERN_WAVES)
            wave = sum(a * np.sin(2 * np.pi * (u * y + v * x) + p)
                       for a, u, v, p in zip(amplitude, fy, fx, phase))
            lo, hi = wave.min(), wave.max()
            patterns[k, :, :, ch] = (wave - lo) / (hi - lo) if hi > lo else 0.5
    return patterns


def class_patterns(shape, num_classes, pattern_seed=0, similarity=0.0):
    """float32 [num_classes, H, W, C] in [0, 1]: the class patterns, each blended with the
    shared pattern by `similarity` (0: the classes' own patterns, unchanged)."""
    h, w, c = shape
    patterns = _waves(np.random.default_rng([int(pattern_seed), h, w, c, num_classes]), shape,
                      num_classes)
    if similarity:      # its own stream: the classes' patterns are the same at every similarity
        shared = _waves(np.random.default_rng([int(pattern_seed), h, w, c, num_classes, 1]),
                        shape, 1)
        patterns = (1 - similarity) * patterns + similarity * shared
    return patterns.astype(np.float32)


class Synthetic(ArrayDataset):
    """`n` images of `shape` (H, W, C), or (H, W) for one channel, in `num_classes` classes.

    Deterministic: the class patterns come from `pattern_seed` (and the shape and class count),
    the images (labels, contrast, brightness, noise) from `seed`. So Synthetic(n, seed=0) and
    Synthetic(m, seed=1) are a training and a test set of one task (given the same `noise` and
    `similarity`); `noise` is the standard deviation of the pixel noise as a fraction of 255,
    `similarity` in [0, 1) how much of every class pattern is shared (the module's doc). Labels
    are balanced: every class has
    n // num_classes or one more examples, in random order.

    images uint8 [n, H, W, C]; labels int64 [n]; classes "class_0", "class_1", ..."""

    def __init__(self, n, shape=(32, 32, 3), num_classes=10, seed=0, noise=0.2,
                 pattern_seed=0, similarity=0.0):
        shape = tuple(int(s) for s in shape)
        if len(shape) == 2:
            shape = shape + (1,)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"Synthetic: shape must be (H, W, C) or (H, W) of positive sizes, "
                             f"got {shape}")
        if int(n) < 0 or int(num_classes) < 1:
            raise ValueError(f"Synthetic: n must be at least 0 and num_classes at least 1, got "
                             f"n={n}, num_classes={num_classes}")
        if not 0 <= float(similarity) < 1 or not float(noise) >= 0:
            raise ValueError(f"Synthetic: similarity must be in [0, 1) and noise at least 0, got "
                             f"similarity={similarity}, noise={noise}")
        n, num_classes = int(n), int(num_classes)
        self.seed, self.noise, self.pattern_seed = int(seed), float(noise), int(pattern_seed)
        self.similarity = float(similarity)
        patterns = class_patterns(shape, num_classes, pattern_seed, self.similarity)
        rng = np.random.default_rng(int(seed))
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
        images = np.empty((n, *shape), np.uint8)
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            m = stop - start
            contrast = rng.uniform(*CONTRAST, (m, 1, 1, 1)).astype(np.float32)
            brightness = rng.uniform(*BRIGHTNESS, (m, 1, 1, 1)).astype(np.float32)
            pixel_noise = rng.standard_normal((m, *shape), dtype=np.float32)
            x = (0.5 + contrast * (patterns[labels[start:stop]] - 0.5) + brightness
                 + np.float32(noise) * pixel_noise)
            images[start:stop] = np.rint(np.clip(x, 0, 1) * 255)
        super().__init__(images, labels, [f"class_{k}" for k in range(num_classes)])
