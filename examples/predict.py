"""Classify image files with a trained checkpoint: the top-k classes and their probabilities.

    python examples/predict.py cat.jpg dog.png --checkpoint runs/folder-resnet18/best.h5
    python examples/predict.py digit.png --checkpoint runs/digits-simple_cnn/last.h5 --top-k 3

The checkpoint is one written by Trainer.save_checkpoint (examples/train_cifar.py and
train_folder.py write them): its config rebuilds the model, and each image is converted to the
model's channels (greyscale or RGB), resized (and centre-cropped) as at training and normalised
with the checkpoint's mean and std (cupycnn/predict.py, docs/predict.md). Output, per image:

    cat.jpg
      1. 0.912345  cat
      2. 0.051234  dog
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source tree

import cupycnn  # noqa: E402
from cupycnn.checkpoint import CheckpointError  # noqa: E402
from cupycnn.data import BadImageError  # noqa: E402
from cupycnn.predict import load_model, predict, prepare_images  # noqa: E402


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow "
                   "reads: PNG, JPEG, ...)")
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="a checkpoint written by Trainer.save_checkpoint")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes to show per image "
                   "(default 5, at most the number of classes)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "sim", "numpy"],
                   help="auto: cuda where a GPU is usable, else numpy")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.device != "auto":
            cupycnn.use(args.device)
        model, checkpoint = load_model(args.checkpoint)
        inputs = prepare_images(args.images, checkpoint.config, checkpoint.normalization)
        results = predict(model, inputs, checkpoint.classes, top_k=args.top_k)
    except (CheckpointError, BadImageError, FileNotFoundError,
            cupycnn.DeviceUnavailableError) as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        return 1
    for path, top in zip(args.images, results):
        print(path)
        for rank, (name, probability) in enumerate(top, start=1):
            print(f"  {rank}. {probability:.6f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
