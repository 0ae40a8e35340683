"""Data: datasets, the loader and on-device transforms (docs/data.md, docs/augmentation.md).

Datasets: CIFAR-10 from its official archives, image folders and their HDF5 cache, scikit-learn's
digits, a synthetic task, validation splits. `Loader` serves seeded, sharded, prefetched batches
of uint8 images on the current device; the transforms (augmentation and normalisation kernels)
turn them into the float32 NCHW batches a model eats.

Every dataset: len(ds); ds[i] -> (uint8 [H, W, C] image, int label); ds.classes; ds.images
uint8 [N, H, W, C]; ds.labels int64 [N]; ds.storage() for loaders (see `base`).
"""
from .base import ArrayDataset, Dataset, Subset, TensorDataset, train_val_split
from .csv_pixels import CSVImages
from .cifar import CIFAR10, DatasetNotFoundError, UnsafePickleError
from .decode import Decode, DecodeTransform, RandomResizedCrop, Resize, ResizeCenterCrop
from .digits import Digits
from .folder import BadImageError, CacheMismatchError, HDF5Dataset, ImageFolder
from .loader import Loader
from .shards import ShardedDataset, TarShards, make_shards, write_shards
from .stream import ImageNet, StreamingDataset, StreamingImageFolder
from .tfrecord import TFRecordDataset, write_tfrecords
from .synthetic import Synthetic
from .transforms import (CIFAR10_MEAN, CIFAR10_STD, AffineTransform, Compose, ImageDataGenerator,
                         Normalize, RandomAffine, RandomCropFlip, RandomTransform, Transform,
                         channel_stats)

from .workers import ShardError, WorkerError

__all__ = ["AffineTransform", "ArrayDataset", "BadImageError", "CIFAR10", "CIFAR10_MEAN",
           "CIFAR10_STD", "CSVImages", "CacheMismatchError", "Compose", "Dataset",
           "DatasetNotFoundError",
           "Decode", "DecodeTransform", "Digits", "HDF5Dataset", "ImageDataGenerator",
           "ImageFolder", "ImageNet", "Loader", "Normalize", "RandomAffine", "RandomCropFlip",
           "RandomResizedCrop", "RandomTransform", "Resize", "ResizeCenterCrop", "ShardError",
           "ShardedDataset", "StreamingDataset", "StreamingImageFolder", "Subset", "Synthetic",
           "TFRecordDataset", "TarShards", "TensorDataset", "Transform", "UnsafePickleError",
           "WorkerError",
           "channel_stats", "make_shards", "train_val_split", "write_shards", "write_tfrecords"]
