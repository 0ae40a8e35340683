"""Classify image files with a trained checkpoint: the top-k classes and their probabilities.

    python examples/predict.py cat.jpg dog.png --checkpoint runs/folder-resnet18/best.h5
    python examples/predict.py digit.png --checkpoint runs/digits-simple_cnn/last.h5 --top-k 3

The same command as `cupycnn predict` (cupycnn/predict.py): the checkpoint's config rebuilds the
model, and each image is converted to the model's channels (greyscale or RGB), resized (and
centre-cropped) as at training and normalised with the checkpoint's mean and std
(docs/predict.md). Output, per image:

    cat.jpg
      1. 0.912345  cat
      2. 0.051234  dog
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source tree

from cupycnn import predict  # noqa: E402


def main(argv=None):
    return predict.main(argv, prog="predict.py")


if __name__ == "__main__":
    raise SystemExit(main())
