"""Datasets and the loader: CIFAR-10 from its official archives, image folders and their HDF5
cache, scikit-learn's digits, a synthetic task, validation splits, and `Loader`, which serves
seeded, sharded, prefetched batches of uint8 images on the current device (docs/data.md).

Every dataset: len(ds); ds[i] -> (uint8 [H, W, C] image, int label); ds.classes; ds.images
uint8 [N, H, W, C]; ds.labels int64 [N]; ds.storage() for loaders (see `base`).
"""
from .base import ArrayDataset, Dataset, Subset, train_val_split
from .cifar import CIFAR10, DatasetNotFoundError, UnsafePickleError
from .digits import Digits
from .folder import BadImageError, CacheMismatchError, HDF5Dataset, ImageFolder
from .loader import Loader
from .synthetic import Synthetic

__all__ = ["ArrayDataset", "BadImageError", "CIFAR10", "CacheMismatchError", "Dataset",
           "DatasetNotFoundError", "Digits", "HDF5Dataset", "ImageFolder", "Loader", "Subset",
           "Synthetic", "UnsafePickleError", "train_val_split"]
