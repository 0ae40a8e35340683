"""A model as data: the tree of library layers with each layer's constructor arguments, written
into checkpoints so that `load_model` and `examples/predict.py` rebuild any model made of
cupycnn's layers, not only the registry's.

    description = describe(model)        # JSON-able: {"type": "Sequential", "children": [...]}
    twin = build_from_description(description)
    twin.load_state_dict(model.state_dict())

A node is {"type": <name>, "args": {...}} for a layer, {"type": "Sequential", "children":
[[name, node], ...]} and {"type": "Residual", "main": node, "shortcut": node or null}. The types
are a fixed table (LAYERS below, the library's own classes) and the arguments plain numbers,
booleans and lists: nothing in a file is ever imported, called by name or evaluated, so a
hostile checkpoint can build only a tree of library layers (of capped size). The ResNets'
blocks are listed by their arguments; a ResNet itself is a Sequential of named children, so it
is described as one (same state_dict names, same computation).

A layer of your own (a subclass with its own forward) is code, not data: `describe` raises
`NotDescribable` naming it, and such a model is rebuilt by the code that defined it
(`model.load_state_dict(checkpoint.model_state)`).
"""
import collections

from ..layers import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                      GlobalAvgPool2D, GroupNorm, MaxPool2D, ReLU, Residual, Sequential)
from .resnet import BasicBlock, Bottleneck, ResNet

MAX_LAYERS = 10_000            # nodes in a description read from a file
MAX_DEPTH = 64                 # nesting of composites


class NotDescribable(ValueError):
    """The model holds a layer that is not one of the library's (LAYERS)."""


def _pool_args(layer):
    return {"kernel_size": layer.kernel_size, "stride": layer.stride, "padding": layer.padding}


# type name -> (class, the constructor arguments of an instance). Exact classes only: a
# subclass may change forward, so it is not described as its parent.
LAYERS = {
    "Conv2D": (Conv2D, lambda l: {
        "in_channels": l.in_channels, "out_channels": l.out_channels,
        "kernel_size": l.kernel_size, "stride": l.stride, "padding": l.padding,
        "bias": "bias" in l.params}),
    "Dense": (Dense, lambda l: {"in_features": l.in_features, "out_features": l.out_features,
                                "bias": "bias" in l.params}),
    "BatchNorm1D": (BatchNorm1D, lambda l: {"num_features": l.num_features, "eps": l.eps,
                                            "momentum": l.momentum, "relu": l.relu}),
    "BatchNorm2D": (BatchNorm2D, lambda l: {"num_features": l.num_features, "eps": l.eps,
                                            "momentum": l.momentum, "relu": l.relu}),
    "GroupNorm": (GroupNorm, lambda l: {"num_groups": l.num_groups,
                                        "num_channels": l.num_channels, "eps": l.eps}),
    "ReLU": (ReLU, lambda l: {}),
    "Dropout": (Dropout, lambda l: {"p": l.p}),
    "Flatten": (Flatten, lambda l: {"start_dim": l.start_dim, "end_dim": l.end_dim}),
    "MaxPool2D": (MaxPool2D, _pool_args),
    "AvgPool2D": (AvgPool2D, _pool_args),
    "GlobalAvgPool2D": (GlobalAvgPool2D, lambda l: {}),
    "BasicBlock": (BasicBlock, lambda l: {"in_planes": l.in_planes, "planes": l.planes,
                                          "stride": l.stride, "fused": l.fused}),
    "Bottleneck": (Bottleneck, lambda l: {"in_planes": l.in_planes, "planes": l.planes,
                                          "stride": l.stride, "fused": l.fused}),
}
_NAME_OF = {cls: name for name, (cls, _) in LAYERS.items()}


def _plain(value):
    """Tuples become lists (JSON has no tuples; the constructors take either)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def describe(model, _path="model"):
    """The description of `model` (see the module docstring); NotDescribable names the first
    layer that is not a library layer."""
    kind = type(model)
    if kind in (Sequential, ResNet):
        return {"type": "Sequential",
                "children": [[name, describe(child, f"{_path}.{name}")]
                             for name, child in model.named_children()]}
    if kind is Residual:
        return {"type": "Residual", "main": describe(model.main, f"{_path}.main"),
                "shortcut": None if model.shortcut is None
                else describe(model.shortcut, f"{_path}.shortcut")}
    if kind not in _NAME_OF:
        raise NotDescribable(f"{_path} is a {kind.__name__}, not one of the library's layers "
                             f"({', '.join(sorted(LAYERS))}, Sequential, Residual): its forward "
                             f"is code, which a checkpoint does not hold; rebuild the model with "
                             f"that code and load the weights (model.load_state_dict("
                             f"checkpoint.model_state))")
    name = _NAME_OF[kind]
    return {"type": name, "args": {k: _plain(v) for k, v in LAYERS[name][1](model).items()}}


def build_from_description(description, where="the description"):
    """The model a description describes, built on the current device (fresh parameters: load
    the weights next). ValueError says what is wrong with a malformed description."""
    count = [0]

    def build(node, path, depth):
        count[0] += 1
        if count[0] > MAX_LAYERS or depth > MAX_DEPTH:
            raise ValueError(f"{where}: more than {MAX_LAYERS} layers or {MAX_DEPTH} levels of "
                             f"nesting; not a model description this library writes")
        if not isinstance(node, dict) or not isinstance(node.get("type"), str):
            raise ValueError(f"{where}: {path} is not a layer node "
                             f'({{"type": ..., ...}}), got {type(node).__name__}')
        kind = node["type"]
        if kind == "Sequential":
            children = node.get("children")
            if not isinstance(children, list) or not all(
                    isinstance(c, list) and len(c) == 2 and isinstance(c[0], str)
                    for c in children):
                raise ValueError(f"{where}: {path}: a Sequential's children must be a list of "
                                 f"[name, layer] pairs")
            return Sequential(collections.OrderedDict(
                (name, build(child, f"{path}.{name}", depth + 1)) for name, child in children))
        if kind == "Residual":
            shortcut = node.get("shortcut")
            return Residual(build(node.get("main"), f"{path}.main", depth + 1),
                            None if shortcut is None
                            else build(shortcut, f"{path}.shortcut", depth + 1))
        if kind not in LAYERS:
            raise ValueError(f"{where}: {path} has the type {kind!r}, which is not one of the "
                             f"library's layers ({', '.join(sorted(LAYERS))}, Sequential, "
                             f"Residual)")
        args = node.get("args", {})
        if not isinstance(args, dict) or not all(_is_plain(v) for v in args.values()):
            raise ValueError(f"{where}: {path} ({kind}): its arguments must be a dict of "
                             f"numbers, booleans, null and lists of numbers, got {args!r}")
        try:
            return LAYERS[kind][0](**args)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {path}: cannot build {kind}(**{args}): {e}") from None

    return build(description, "model", 0)


def _is_plain(value):
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, (int, float)):
        return True
    if isinstance(value, list):
        return len(value) <= 8 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                        for v in value)
    return False
