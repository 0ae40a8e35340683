"""scikit-learn's handwritten digits: 1,797 real 8x8 grey images of the digits 0-9 (the UCI
"Optical Recognition of Handwritten Digits" test set), shipped inside scikit-learn, so they work
without a network. A small real dataset for examples, tests and offline runs."""
import numpy as np

from ._optional import require
from .base import ArrayDataset, train_val_split

SPLIT_SEED = 0          # the default seed of the 80/20 split
TEST_FRACTION = 0.2
SOURCE_MAX = 16         # load_digits pixels are counts 0..16 (of a 4x4 block of a 32x32 bitmap)


class Digits(ArrayDataset):
    """The 1,797 digits of `sklearn.datasets.load_digits`, split 80/20: `train=True` gives the
    1,438 training images, False the 359 test images. The split is stratified (each digit in
    both halves in its overall proportion) and fixed by `seed` (default 0): the same seed gives
    the same split everywhere, and the two halves are disjoint and together the whole set.

    images uint8 [N, 8, 8, 1]: the 0..16 pixel values scaled to 0..255 (round(v * 255 / 16));
    labels int64 [N]; classes "0" ... "9"; `indices` the positions of the images in
    load_digits' order."""

    def __init__(self, train=True, seed=SPLIT_SEED):
        datasets = require("sklearn.datasets", "scikit-learn", "cupycnn.data.Digits")
        bunch = datasets.load_digits()
        images = np.rint(bunch.images * (255.0 / SOURCE_MAX)).astype(np.uint8)[..., None]
        whole = ArrayDataset(images, bunch.target, classes=[str(d) for d in range(10)])
        train_part, test_part = train_val_split(whole, TEST_FRACTION, seed, stratified=True)
        self.train, self.seed = bool(train), int(seed)
        self.indices = (train_part if train else test_part).indices
        super().__init__(images[self.indices], whole.labels[self.indices], whole.classes)
