"""Images stored as rows of pixel values in a CSV file, as Kaggle ships its digit and
sign-language sets:

    label,pixel0,pixel1,...,pixel783          (Digit Recognizer: pixels numbered from 0)
    label,pixel1,pixel2,...,pixel784          (Sign Language MNIST: numbered from 1)
    pixel0,...,pixel783                       (a test set: no label column)
    emotion,pixels,Usage                      (FER-2013: the pixels space-separated in one column)
    7,0,0,...                                 (no header: the label first when the row has
                                               one value more than a square image)

A header is recognised by a first row that is not all numbers; the label is the column named
label (or class, target, emotion, y; any letter case), or with no header the first column when
the remaining count of values makes an image; every other numeric column is a pixel, in order.
Pixel values must be whole numbers in 0..255. The image shape is `shape` ((H, W) or (H, W,
C), channels last within a row), else square greyscale (28 x 28 for 784 values), else square
RGB when the count divides by 3 into a square. Labels are integers (classes "0".."K-1"), or
strings (classes their sorted distinct values).

The file is parsed in chunks of `chunk_rows` rows into a preallocated uint8 array: memory is the
decoded images (a quarter of the text's size or less) and one chunk, never the whole text.
"""
import csv
import io
import math

import numpy as np

from .base import ArrayDataset

LABEL_NAMES = ("label", "labels", "class", "target", "emotion", "y")


def _open_text(path):
    """The CSV file at `path` as UTF-8 text, if it is a regular file (a FIFO is refused, not
    waited on: ValueError saying what it is)."""
    from .folder import open_regular
    try:
        return io.TextIOWrapper(open_regular(path), encoding="utf-8", newline="")
    except OSError as e:
        raise ValueError(f"CSVImages: cannot read {path}: {e.strerror or e}") from None


def _is_number(token):
    try:
        float(token)
        return True
    except ValueError:
        return False


def _square(n):
    r = int(math.isqrt(n))
    return r if r * r == n else None


def infer_shape(count):
    """(H, W, C) for `count` pixel values: square greyscale, else square RGB."""
    side = _square(count)
    if side:
        return side, side, 1
    if count % 3 == 0 and _square(count // 3):
        side = _square(count // 3)
        return side, side, 3
    raise ValueError(f"CSVImages: {count} pixel values per row make neither a square greyscale "
                     f"nor a square RGB image; pass shape=(height, width[, channels])")


class CSVImages(ArrayDataset):
    """A CSV file of pixel rows (see the module's docstring) as an in-memory dataset.

    shape        (H, W) or (H, W, C); default inferred from the number of pixel columns
    label_column the label's column name (header) or index; None: found as described;
                 False: no labels (all 0, e.g. a test set)
    `columns` holds the header (None without one); `has_labels` whether labels were read."""

    def __init__(self, path, shape=None, label_column=None, chunk_rows=4096):
        try:
            self._read(path, shape, label_column, chunk_rows)
        except UnicodeDecodeError as e:
            raise ValueError(f"CSVImages: {path} is not UTF-8 text (byte {e.object[e.start]:#04x} "
                             f"at {e.start} of a chunk): a CSV of pixels holds numbers") from None
        except csv.Error as e:
            raise ValueError(f"CSVImages: {path} is not a readable CSV file: {e}") from None

    def _read(self, path, shape, label_column, chunk_rows):
        self.path = path
        with _open_text(path) as f:
            reader = csv.reader(f)
            first = next(reader, None)
            if first is None:
                raise ValueError(f"CSVImages: {path} is empty")
            header = None if all(_is_number(t) for t in first if t.strip()) else \
                [t.strip() for t in first]
            rows = sum(1 for _ in reader) + (header is None)
        self.columns = header
        label_at, pixel_cols, spaced = self._layout(path, first, header, label_column, shape)
        count = len(pixel_cols) if not spaced else len(self._peek_spaced(path, header, spaced))
        h, w, c = self._shape(shape, count)
        images = np.empty((rows, h, w, c), dtype=np.uint8)
        labels = []
        with _open_text(path) as f:
            reader = csv.reader(f)
            if header is not None:
                next(reader)
            done = 0
            while True:
                chunk = [r for _, r in zip(range(chunk_rows), reader)]
                if not chunk:
                    break
                for i, r in enumerate(chunk):
                    if len(r) != len(first):
                        raise ValueError(f"CSVImages: {path}, row {done + i + 1 + (header is not None)}"
                                         f" has {len(r)} values, the first row {len(first)}")
                if spaced is None:
                    values = np.array([[r[j] for j in pixel_cols] for r in chunk])
                else:
                    values = np.array([r[spaced].split() for r in chunk])
                    if values.ndim != 2 or values.shape[1] != count:
                        raise ValueError(f"CSVImages: {path}: the rows from "
                                         f"{done + 1} hold different numbers of pixels")
                try:
                    numbers = values.astype(np.float64)
                except ValueError:
                    raise ValueError(f"CSVImages: {path}: a pixel value in rows {done + 1}.."
                                     f"{done + len(chunk)} is not a number") from None
                if (numbers < 0).any() or (numbers > 255).any() or \
                        (numbers != np.round(numbers)).any():
                    raise ValueError(f"CSVImages: {path}: pixel values must be whole numbers in "
                                     f"0..255 (rows {done + 1}..{done + len(chunk)} have "
                                     f"{numbers.min()}..{numbers.max()})")
                images[done:done + len(chunk)] = numbers.astype(np.uint8).reshape(-1, h, w, c)
                if label_at is not None:
                    labels += [r[label_at].strip() for r in chunk]
                done += len(chunk)
        self.has_labels = label_at is not None
        if not self.has_labels:
            super().__init__(images, np.zeros(rows, dtype=np.int64), ["0"])
            return
        if all(_is_number(t) for t in labels):
            ints = np.array([float(t) for t in labels])
            if (ints != np.round(ints)).any() or (ints < 0).any():
                raise ValueError(f"CSVImages: {path}: labels must be non-negative integers or "
                                 f"names")
            super().__init__(images, ints.astype(np.int64))
        else:
            classes = sorted(set(labels))
            index = {name: k for k, name in enumerate(classes)}
            super().__init__(images, np.array([index[t] for t in labels]), classes)

    @staticmethod
    def _shape(shape, count):
        if shape is None:
            return infer_shape(count)
        shape = tuple(int(s) for s in shape)
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) != 3 or int(np.prod(shape)) != count:
            raise ValueError(f"CSVImages: shape {shape} needs {int(np.prod(shape))} pixel values "
                             f"per row, the rows have {count}")
        return shape

    @staticmethod
    def _peek_spaced(path, header, column):
        with _open_text(path) as f:
            reader = csv.reader(f)
            if header is not None:
                next(reader)
            return next(reader)[column].split()

    def _layout(self, path, first, header, label_column, shape):
        """(label column index or None, pixel column indices, space-separated pixel column
        index or None)."""
        n = len(first)
        if header is not None:
            lower = [h.lower() for h in header]
            if label_column is False:
                label_at = None
            elif label_column is None:
                label_at = next((lower.index(name) for name in LABEL_NAMES if name in lower),
                                None)
            elif isinstance(label_column, int):
                label_at = label_column
            else:
                if label_column not in header:
                    raise ValueError(f"CSVImages: {path} has no column {label_column!r} (its "
                                     f"header: {header[:5]}...)")
                label_at = header.index(label_column)
            if "pixels" in lower:
                return label_at, [], lower.index("pixels")
            with _open_text(path) as f:
                reader = csv.reader(f)
                next(reader)
                sample = next(reader, None)
            if sample is None:
                raise ValueError(f"CSVImages: {path} has a header and no rows")
            pixels = [j for j in range(n) if j != label_at and _is_number(sample[j])]
            return label_at, pixels, None
        if label_column is False:
            return None, list(range(n)), None
        if isinstance(label_column, int):
            return label_column, [j for j in range(n) if j != label_column], None
        expected = int(np.prod(shape)) if shape is not None else None
        if expected == n or (expected is None and (_square(n) or (n % 3 == 0 and
                                                                  _square(n // 3)))
                             and not (_square(n - 1) or ((n - 1) % 3 == 0 and
                                                         _square((n - 1) // 3)))):
            return None, list(range(n)), None
        return 0, list(range(1, n)), None


