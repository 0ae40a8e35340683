"""The classic CIFAR-10 CNN of the Keras tutorials: Conv-BatchNorm-ReLU blocks with max-pooling
and dropout, then a dense head.

    simple_cnn(num_classes=10)     for 32x32x3 images: blocks of 32, 64 and 128 filters

Each block is (Conv 3x3 same - BatchNorm - ReLU) x convs_per_block, then MaxPool 2x2 and
Dropout; the head is Flatten - Dense(hidden) - BatchNorm1D - ReLU - Dropout - Dense(classes).
fused (the default): each ReLU runs inside its batchnorm's kernels (BatchNorm2D(relu=True):
one pass over memory fewer, the same results); fused=False adds the ReLU layers
(block1_relu1, ..., fc1_relu). The parameters and their names are the same either way.
"""
import collections

from ..layers import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D,
                      ReLU, Sequential)


def simple_cnn(num_classes=10, in_channels=3, input_size=32, widths=(32, 64, 128),
               convs_per_block=2, block_dropout=(0.2, 0.3, 0.4), hidden=128, head_dropout=0.5,
               fused=True):
    if len(block_dropout) != len(widths):
        raise ValueError(f"simple_cnn: {len(widths)} blocks but {len(block_dropout)} dropout "
                         f"rates")
    size = input_size
    children = collections.OrderedDict()
    channels = in_channels
    for b, (width, p) in enumerate(zip(widths, block_dropout), start=1):
        for c in range(1, convs_per_block + 1):
            children[f"block{b}_conv{c}"] = Conv2D(channels, width, 3, padding=1)
            children[f"block{b}_bn{c}"] = BatchNorm2D(width, relu=fused)
            if not fused:
                children[f"block{b}_relu{c}"] = ReLU()
            channels = width
        children[f"block{b}_pool"] = MaxPool2D(2)
        size //= 2
        if size < 1:
            raise ValueError(f"simple_cnn: {input_size}x{input_size} inputs are too small for "
                             f"{len(widths)} pooling blocks")
        children[f"block{b}_dropout"] = Dropout(p)
    children["flatten"] = Flatten()
    children["fc1"] = Dense(channels * size * size, hidden)
    children["fc1_bn"] = BatchNorm1D(hidden, relu=fused)
    if not fused:
        children["fc1_relu"] = ReLU()
    children["fc1_dropout"] = Dropout(head_dropout)
    children["fc2"] = Dense(hidden, num_classes)
    return Sequential(children)
