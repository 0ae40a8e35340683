"""Prediction from a checkpoint: rebuild the model, feed it image files, read its top-k classes.

    from cupycnn.predict import load_model, prepare_images, predict
    model, checkpoint = load_model("runs/digits-simple_cnn/last.h5")
    x = prepare_images(["seven.png"], checkpoint.config, checkpoint.normalization)
    for top in predict(model, x, checkpoint.classes, top_k=3):
        print(top)                                  # [("7", 0.98), ("1", 0.01), ("9", 0.004)]

`examples/predict.py` is the command-line front of this module.

What a checkpoint must hold (written by `Trainer.save_checkpoint` with the trainer's `config`,
`classes` and `normalization`; examples/train_cifar.py writes them so):

    config          {"model": name in cupycnn.models.REGISTRY, "model_kwargs": {...},
                     "input_shape": [C, H, W], "resize": [H, W] or null, "crop": bool}, or
                    instead of "model" and "model_kwargs" an "architecture": the tree of
                    library layers with their arguments (cupycnn/models/description.py), which
                    Trainer.save_checkpoint writes for any model made of library layers
                    (other keys, such as "dataset", are ignored)
    classes         the class names, label k's at position k (absent: "0", "1", ...)
    normalization   {"mean": [...], "std": [...]}, one value per channel or one for all, in
                    0..1 units: the model's input is (pixel / 255 - mean) / std

Images are prepared as the training images were: decoded with Pillow; converted to the model's
channels (C = 1: Pillow's "L", the ITU-R 601-2 luma of a colour image; C = 3: "RGB", a grey image
repeated in the three channels, alpha dropped, as torchvision's loader); brought to the input
size with `cupycnn.data.folder.resize`, the very function ImageFolder resizes with at training
(to `resize` exactly, bilinear, or with `crop` torchvision's Resize + CenterCrop; with
`resize` null, images already of the input size are kept as they are and others are resized to
it); then normalised on the current device by `cupycnn.data.Normalize`, the training transform.

Errors say what is wrong: a missing image is FileNotFoundError naming it, an unreadable one
`cupycnn.data.BadImageError` naming it; a missing, corrupt or mismatched checkpoint, or one
without a config, is `cupycnn.checkpoint.CheckpointError`.
"""
from pathlib import Path

import numpy as np

from . import devices as _device
from . import models as _models
from .checkpoint import CheckpointError, load_checkpoint
from .data.folder import BadImageError, resize
from .data.transforms import Normalize
from .layers.base import training_mode
from .ops._storage import decode
from .reference.softmax_xent import softmax

CONFIG_FORMAT = ('{"model": "<name in cupycnn.models.REGISTRY>", "model_kwargs": {...}, '
                 '"input_shape": [C, H, W], "resize": [H, W] or null, "crop": false}, or '
                 '"architecture": {...} (a model description) in place of "model" and '
                 '"model_kwargs"')
MODES = {1: "L", 3: "RGB"}          # Pillow's conversion for each channel count
BATCH = 64                          # images per forward pass


def check_config(config, where="checkpoint"):
    """The prediction fields of a checkpoint's config, validated: (model name, model kwargs,
    (C, H, W), (h, w) or None, crop); the name is None for a config that holds an architecture
    instead. CheckpointError names what is missing or wrong."""
    if not config:
        raise CheckpointError(f"{where} holds no model configuration: it was saved without one "
                              f"(Trainer(..., config=...)), so the model cannot be rebuilt. "
                              f"Expected a config of the form {CONFIG_FORMAT}")
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: its config is a {type(config).__name__}, expected "
                              f"{CONFIG_FORMAT}")
    described = "model" not in config and "architecture" in config
    wanted = ("input_shape",) if described else ("model", "model_kwargs", "input_shape")
    missing = [k for k in wanted if k not in config]
    if missing:
        why = config.get("architecture_missing")
        raise CheckpointError(f"{where}: its config lacks {', '.join(missing)} (it has "
                              f"{', '.join(sorted(config)) or 'nothing'}); expected "
                              f"{CONFIG_FORMAT}" + (f". No architecture was saved: {why}"
                                                    if why else ""))
    if described:
        name, kwargs = None, {}
        if not isinstance(config["architecture"], dict):
            raise CheckpointError(f"{where}: its architecture must be a model description "
                                  f"(a dict), got {type(config['architecture']).__name__}")
    else:
        name, kwargs = config["model"], config["model_kwargs"]
        if name not in _models.REGISTRY:
            raise CheckpointError(f"{where}: its config names the model {name!r}, which is not "
                                  f"in cupycnn.models.REGISTRY "
                                  f"({', '.join(sorted(_models.REGISTRY))})")
        if not isinstance(kwargs, dict):
            raise CheckpointError(f"{where}: model_kwargs must be a dict, got {kwargs!r}")
    shape = config["input_shape"]
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(isinstance(s, int) and s >= 1 for s in shape)):
        raise CheckpointError(f"{where}: input_shape must be [C, H, W] of positive integers, "
                              f"got {shape!r}")
    channels, height, width = shape
    if channels not in MODES:
        raise CheckpointError(f"{where}: the model takes {channels}-channel images; prediction "
                              f"from image files supports 1 (greyscale) or 3 (RGB)")
    size = config.get("resize")
    if size is not None:
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(s, int) and s >= 1 for s in size)):
            raise CheckpointError(f"{where}: resize must be [H, W] of positive integers or "
                                  f"null, got {size!r}")
        if list(size) != [height, width]:
            raise CheckpointError(f"{where}: resize {list(size)} disagrees with the input_shape "
                                  f"{list(shape)}")
    for key, value in (("in_channels", channels), ("input_size", height), ("input_size", width)):
        if key in kwargs and kwargs[key] != value:
            raise CheckpointError(f"{where}: model_kwargs {key}={kwargs[key]!r} disagrees with "
                                  f"the input_shape {list(shape)}")
    crop = config.get("crop", False)
    if not isinstance(crop, bool):
        raise CheckpointError(f"{where}: crop must be true or false, got {crop!r}")
    return name, kwargs, (channels, height, width), (tuple(size) if size else None), crop


def _check_normalization(normalization, channels, where):
    if normalization is None:
        raise CheckpointError(f"{where} holds no input normalisation; expected "
                              f'{{"mean": [...], "std": [...]}} (Trainer(..., '
                              f"normalization=...)), in 0..1 units")
    try:
        mean = np.atleast_1d(np.asarray(normalization["mean"], dtype=np.float64))
        std = np.atleast_1d(np.asarray(normalization["std"], dtype=np.float64))
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{where}: the normalisation {normalization!r} is not "
                              f'{{"mean": [...], "std": [...]}} ({type(e).__name__}: {e})') \
            from None
    for label, values in (("mean", mean), ("std", std)):
        if values.ndim != 1 or len(values) not in (1, channels):
            raise CheckpointError(f"{where}: the normalisation {label} has {values.size} values; "
                                  f"the model takes {channels} channels (give 1 or {channels})")
    if not (std > 0).all():
        raise CheckpointError(f"{where}: the normalisation std must be positive, got "
                              f"{std.tolist()}")
    return mean.tolist(), std.tolist()


def load_model(checkpoint_path):
    """(model, checkpoint): the model the checkpoint's config describes, built on the current
    device with the checkpoint's weights and buffers, in evaluation mode (so that `model(x)`
    predicts: batchnorm's running statistics, no dropout; `model.train()` to fine-tune), and
    the checkpoint (its `config`, `classes` and `normalization` feed `prepare_images` and
    `predict`). Any problem is a CheckpointError saying what is wrong."""
    checkpoint = load_checkpoint(checkpoint_path)
    where = str(checkpoint.path)
    name, kwargs, shape, _, _ = check_config(checkpoint.config, where)
    _check_normalization(checkpoint.normalization, shape[0], where)
    model = build_from_config(name, kwargs, checkpoint.model_state, where,
                              checkpoint.config.get("architecture"))
    checkpoint.restore(model)               # CheckpointError on a state that does not match
    classes = checkpoint.classes
    if classes is not None and (not isinstance(classes, list) or not classes):
        raise CheckpointError(f"{where}: classes must be a list of names, got {classes!r}")
    return model.eval(), checkpoint


MAX_MODEL_ARGUMENT = 1 << 20      # no model argument of a checkpoint's config is larger


def build_from_config(name, kwargs, model_state, where, architecture=None):
    """The model `name`(**kwargs) of a checkpoint's config (or, when `name` is None, the model
    its `architecture` describes), built under an allocation limit of what the checkpoint's own
    tensors hold (twice, for the gradients, plus 1 MiB): a config cannot make the loader
    allocate more than the file it came with. CheckpointError naming what is wrong."""
    from .layers.base import allocation_limit

    def check(value, at):
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, (int, float)):
            if abs(value) > MAX_MODEL_ARGUMENT:
                raise CheckpointError(f"{where}: model_kwargs {at}={value!r} is larger than "
                                      f"any model argument may be ({MAX_MODEL_ARGUMENT})")
            return
        if isinstance(value, (list, tuple)) and len(value) <= 1024:
            for i, item in enumerate(value):
                check(item, f"{at}[{i}]")
            return
        raise CheckpointError(f"{where}: model_kwargs {at} is {type(value).__name__} "
                              f"{str(value)[:60]!r}, not a number, a string or a short list")

    for key, value in kwargs.items():
        check(value, key)
    stored = sum(int(np.asarray(v).nbytes) for v in model_state.values())
    limit = 2 * stored + (1 << 20)
    if name is None:                        # a model of library layers, described as data
        from .models.description import build_from_description
        try:
            with allocation_limit(limit, f"the architecture of {where}"):
                return build_from_description(architecture, f"{where}: its architecture")
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    try:
        with allocation_limit(limit, f"{name} from the config of {where}"):
            return _models.build(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: cannot build {name}(**{kwargs}) from its config: "
                              f"{e}") from None


def load_images(paths, config):
    """uint8 [N, H, W, C]: each image file decoded, converted to the config's channels and
    brought to its input size, exactly as at training (see the module docstring)."""
    from .data._optional import require
    Image = require("PIL.Image", "Pillow", "cupycnn.predict")
    _, _, (channels, height, width), size, crop = check_config(config, "the config")
    size = size or (height, width)
    images = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no image file at {path}" + (
                " (it is a folder)" if path.is_dir() else ""))
        try:
            with Image.open(path) as image:
                image = image.convert(MODES[channels])       # decodes the whole file
                if image.size != (size[1], size[0]):
                    image = resize(image, size, crop)
                array = np.array(image, dtype=np.uint8)
        except Exception as e:      # Pillow raises OSError, SyntaxError, ValueError, ...
            raise BadImageError(f"cannot read the image {path}: {type(e).__name__}: {e}") \
                from None
        images.append(array.reshape(height, width, channels))
    if not images:
        raise ValueError("load_images: no image paths given")
    return np.stack(images)


def prepare_images(paths, config, normalization):
    """float32 [N, C, H, W] on the current device: the images at `paths`, loaded as at training
    (load_images) and normalised with the checkpoint's mean and std (Normalize, the training
    transform)."""
    _, _, (channels, _, _), _, _ = check_config(config, "the config")
    mean, std = _check_normalization(normalization, channels, "the checkpoint")
    images = _device.asarray(load_images(paths, config))
    return Normalize(mean, std)(images)


def probabilities(model, inputs, batch_size=BATCH):
    """float64 [N, classes] (NumPy): the softmax of the model's logits for model-ready inputs
    [N, C, H, W] (evaluation mode: batchnorm's running statistics, no dropout; the model's
    previous modes come back afterwards)."""
    outputs = []
    with training_mode(model, False):
        for start in range(0, inputs.shape[0], batch_size):
            logits = model.forward(inputs[start:start + batch_size], training=False)
            outputs.append(decode(_device.asnumpy(logits)).astype(np.float64))   # BF16 too
    return softmax(np.concatenate(outputs))


def predict(model, inputs, classes=None, top_k=5):
    """Per input, its `top_k` most probable classes as [(name, probability), ...], most
    probable first (ties: the lower label first). `classes`: the names (None: "0", "1", ...);
    top_k is capped at the number of classes."""
    if not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"predict: top_k must be a positive integer, got {top_k!r}")
    probs = probabilities(model, inputs)
    count = probs.shape[1]
    if classes is None:
        classes = [str(k) for k in range(count)]
    if len(classes) != count:
        raise CheckpointError(f"the model has {count} outputs but the checkpoint names "
                              f"{len(classes)} classes")
    order = np.argsort(-probs, axis=1, kind="stable")[:, :min(int(top_k), count)]
    return [[(classes[k], float(row[k])) for k in ranks] for row, ranks in zip(probs, order)]


# ------------------------------------------------------------------------------ the command

def _positive_int(text):
    import argparse
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser(prog="predict.py"):
    """The prediction command's options (examples/predict.py, `cupycnn predict`)."""
    import argparse
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Classify image files with a trained checkpoint: the top-k classes and "
                    "their probabilities.\n\n"
                    f"    {prog} cat.jpg dog.png --checkpoint runs/folder-resnet18/best.h5\n"
                    f"    {prog} digit.png --checkpoint runs/digits-simple_cnn/last.h5 "
                    f"--top-k 3\n\n"
                    "The checkpoint's config rebuilds the model (a registry model, or any model "
                    "of library layers from its architecture); each image is converted to the "
                    "model's channels, resized (and centre-cropped) as at training and "
                    "normalised with the checkpoint's mean and std (docs/predict.md).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow "
                   "reads: PNG, JPEG, ...)")
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="a checkpoint written by Trainer.save_checkpoint (the training command "
                        "writes <log-dir>/last.h5 and best.h5)")
    p.add_argument("--top-k", type=_positive_int, default=5, help="classes to show per image "
                   "(default: 5, at most the number of classes)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "sim", "numpy"],
                   help="where the model runs; auto: cuda where a GPU is usable, else numpy "
                        "(default: auto)")
    return p


def main(argv=None, prog="predict.py"):
    """The prediction command: prints each image's top-k classes; exit status 1 with one line
    on stderr for a missing image, an unreadable one, or a checkpoint that cannot be used."""
    import sys
    args = build_parser(prog).parse_args(argv)
    try:
        if args.device != "auto":
            _device.use(args.device)
        model, checkpoint = load_model(args.checkpoint)
        inputs = prepare_images(args.images, checkpoint.config, checkpoint.normalization)
        results = predict(model, inputs, checkpoint.classes, top_k=args.top_k)
    except (CheckpointError, BadImageError, FileNotFoundError,
            _device.DeviceUnavailableError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    for path, top in zip(args.images, results):
        print(path)
        for rank, (name, probability) in enumerate(top, start=1):
            print(f"  {rank}. {probability:.6f}  {name}")
    return 0
