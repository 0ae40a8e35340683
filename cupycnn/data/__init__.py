"""Data: on-device transforms (augmentation and normalisation) for the loader's uint8 batches."""
from .transforms import (CIFAR10_MEAN, CIFAR10_STD, AffineTransform, Compose,  # noqa: F401
                         ImageDataGenerator, Normalize, RandomAffine, RandomCropFlip,
                         RandomTransform, Transform, channel_stats)
