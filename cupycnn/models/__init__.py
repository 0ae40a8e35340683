"""Models built from cupycnn's layers, and a registry to rebuild one from a checkpoint.

    model = cupycnn.models.build("resnet18", num_classes=10, stem="cifar")
    model.summary((3, 32, 32))
"""
from .inference import fold_batchnorm
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from .simple_cnn import simple_cnn

REGISTRY = {"simple_cnn": simple_cnn, "resnet18": resnet18, "resnet34": resnet34,
            "resnet50": resnet50}


def build(name, **kwargs):
    """The model `name` (one of REGISTRY) with constructor arguments `kwargs`; the pair is what
    a checkpoint's config stores."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**kwargs)


__all__ = ["BasicBlock", "Bottleneck", "REGISTRY", "ResNet", "build", "fold_batchnorm",
           "resnet18", "resnet34", "resnet50", "simple_cnn"]
