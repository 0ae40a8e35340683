"""ResNets with torchvision's structure and state_dict names, so torchvision weights load.

    resnet18(num_classes=10, stem="cifar")      3x3 stem convolution, no max-pool (32x32 inputs)
    resnet50(num_classes=1000, stem="imagenet") 7x7 stride-2 stem and a 3x3 stride-2 max-pool

Names follow torchvision: conv1, bn1, layer1.0.conv1, layer1.0.bn1, ..., layer2.0.downsample.0
(the 1x1 projection) and .1 (its batchnorm), fc. BasicBlock (ResNet-18/34) and Bottleneck
(ResNet-50, the stride on the 3x3 convolution as torchvision's "v1.5") are a Residual of the
block's main branch and its shortcut, followed by a ReLU; their named_children expose the
torchvision names while forward and backward go through the Residual.
"""
import collections

from ..layers import (BatchNorm2D, Conv2D, Dense, GlobalAvgPool2D, Layer, MaxPool2D, ReLU,
                      Residual, Sequential)
from ..ops import elementwise as elementwise_ops


class _Block(Layer):
    """A residual block: relu(main(x) + shortcut(x)), with torchvision's child names.

    fused (the default): every batchnorm applies its ReLU in the same pass, and the last one
    also adds the shortcut, relu(bn(h) + shortcut) in one kernel (BatchNorm2D's fused epilogue),
    forward and backward; and every convolution computes its batchnorm's training statistics in
    its epilogue (Conv2D.feed_statistics_to). fused=False composes the separate layers:
    Residual(main, shortcut) then ReLU, with a ReLU layer after every batchnorm but the last.
    Both compute the same (the statistics' double sums in another order: docs/STEP.md)."""

    def __init__(self, in_planes, planes, stride, names, downsample, fused=True):
        super().__init__()
        self.in_planes, self.planes, self.stride = in_planes, planes, stride
        self._named = list(names.items()) + ([("downsample", downsample)] if downsample else [])
        self.fused = bool(fused)
        if self.fused:
            items = list(names.items())
            for _, layer in items:
                if isinstance(layer, BatchNorm2D):
                    layer.relu = True
            _feed_statistics(items)
            if downsample is not None:
                _feed_statistics(downsample.named_children())
            self.body = Sequential(collections.OrderedDict(items[:-1]))
            self.last_bn = items[-1][1]
            self.downsample = downsample
        else:
            main = Sequential(collections.OrderedDict(names_with_relus(names)))
            self.residual = Residual(main, downsample)
            self.relu = ReLU()

    def named_children(self):
        return self._named

    def extra_repr(self):
        return f"{self.in_planes}, {self.planes}, stride={self.stride}"

    def input_layers(self):
        if not self.fused:
            return self.residual.input_layers()
        if self.downsample is None:          # the identity shortcut's gradient is dy itself
            return []
        return self.body.input_layers() + self.downsample.input_layers()

    def forward(self, x, training=None):
        if not self.fused:
            return self.relu(self.residual(x, training), training)
        h = self.body(x, training)
        shortcut = x if self.downsample is None else self.downsample(x, training)
        return self.last_bn.forward_residual(h, shortcut, training)

    def backward(self, dy):
        if not self.fused:
            return self.residual.backward(self.relu.backward(dy))
        dh, dshortcut = self.last_bn.backward_residual(dy)
        dx = self.body.backward(dh)
        if self.downsample is not None:
            dshortcut = self.downsample.backward(dshortcut)
        if dx is None and dshortcut is None:      # without_input_grad: not wanted
            return None
        return elementwise_ops.add(dx, dshortcut)


def names_with_relus(names):
    """conv1, bn1, relu1, conv2, bn2[, relu2, conv3, bn3]: a ReLU after every batchnorm but the
    last (the last ReLU comes after the addition)."""
    items = list(names.items())
    out = []
    for i, (name, layer) in enumerate(items):
        out.append((name, layer))
        if name.startswith("bn") and i != len(items) - 1:
            out.append((f"relu{name[2:]}", ReLU()))
    return out


def _feed_statistics(named):
    """Each Conv2D followed by a BatchNorm2D computes the batchnorm's training statistics in its
    epilogue (Conv2D.feed_statistics_to: one read of every convolution's output fewer)."""
    layers = [layer for _, layer in named]
    for conv, bn in zip(layers, layers[1:]):
        if isinstance(conv, Conv2D) and isinstance(bn, BatchNorm2D):
            conv.feed_statistics_to(bn)


def _downsample(in_planes, out_planes, stride):
    if stride == 1 and in_planes == out_planes:
        return None
    return Sequential(Conv2D(in_planes, out_planes, 1, stride=stride, bias=False),
                      BatchNorm2D(out_planes))


class BasicBlock(_Block):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1, fused=True):
        names = collections.OrderedDict(
            conv1=Conv2D(in_planes, planes, 3, stride=stride, padding=1, bias=False),
            bn1=BatchNorm2D(planes),
            conv2=Conv2D(planes, planes, 3, stride=1, padding=1, bias=False),
            bn2=BatchNorm2D(planes))
        super().__init__(in_planes, planes, stride, names, _downsample(in_planes, planes, stride),
                         fused)


class Bottleneck(_Block):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1, fused=True):
        out = planes * self.expansion
        names = collections.OrderedDict(
            conv1=Conv2D(in_planes, planes, 1, bias=False),
            bn1=BatchNorm2D(planes),
            conv2=Conv2D(planes, planes, 3, stride=stride, padding=1, bias=False),
            bn2=BatchNorm2D(planes),
            conv3=Conv2D(planes, out, 1, bias=False),
            bn3=BatchNorm2D(out))
        super().__init__(in_planes, planes, stride, names, _downsample(in_planes, out, stride),
                         fused)


class ResNet(Sequential):
    """conv1, bn1, relu, [maxpool], layer1..layer4, avgpool, fc. fused (the default): the
    ReLUs run inside the batchnorms (bn1 has relu=True and there is no separate relu child; the
    blocks' batchnorms likewise, see _Block); fused=False builds the separate layers. `width`:
    the stem's and layer1's channels (64 in torchvision's ResNets; layer2..4 have 2, 4 and 8 times
    as many)."""

    def __init__(self, block, layers, num_classes=1000, stem="imagenet", in_channels=3,
                 fused=True, width=64):
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        children = collections.OrderedDict()
        if stem == "imagenet":
            children["conv1"] = Conv2D(in_channels, width, 7, stride=2, padding=3, bias=False)
        else:
            children["conv1"] = Conv2D(in_channels, width, 3, stride=1, padding=1, bias=False)
        children["bn1"] = BatchNorm2D(width, relu=fused)
        if fused:
            children["conv1"].feed_statistics_to(children["bn1"])
        if not fused:
            children["relu"] = ReLU()
        if stem == "imagenet":
            children["maxpool"] = MaxPool2D(3, stride=2, padding=1)
        in_planes = width
        for i, (planes, count) in enumerate(zip((width, 2 * width, 4 * width, 8 * width), layers)):
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(in_planes, planes, stride, fused))
                in_planes = planes * block.expansion
            children[f"layer{i + 1}"] = Sequential(*blocks)
        children["avgpool"] = GlobalAvgPool2D()
        children["fc"] = Dense(8 * width * block.expansion, num_classes)
        super().__init__(children)
        self.block_name, self.num_classes, self.stem = block.__name__, num_classes, stem
        self.fused = bool(fused)


def resnet18(num_classes=1000, stem="imagenet", in_channels=3, fused=True, width=64):
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, stem, in_channels, fused, width)


def resnet34(num_classes=1000, stem="imagenet", in_channels=3, fused=True, width=64):
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, stem, in_channels, fused, width)


def resnet50(num_classes=1000, stem="imagenet", in_channels=3, fused=True, width=64):
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, stem, in_channels, fused, width)
