r"""Train a classifier on a folder of images, one folder per class (e.g. a 15-class animal
dataset of 256x256 JPEGs, in the Kaggle layout or torchvision's):

    python examples/train_folder.py --dataset folder:animals/ --image-size 128 \
        --weight-decay 1e-4 --l1 1e-5 --penalize head --early-stopping 5

`folder:PATH` with `train/` and `test/` (or `Training Data/` and `Testing Data/`) subfolders
uses them; otherwise 15% of the images are held out for the test. Images are decoded once into
an HDF5 cache under --data-dir/cache. Defaults: ResNet-18 at 128x128, Adam, Keras-style
augmentation (rotation, shifts, zoom, flips), reduce-LR-on-plateau; see cupycnn/cli.py.
"""
import sys

from cupycnn.cli import main

if __name__ == "__main__":
    wants_help = any(a in ("-h", "--help") for a in sys.argv[1:])
    if not wants_help and not any(a.startswith(("--dataset", "--config"))
                                  for a in sys.argv[1:]):
        print("error: give the image folder: --dataset folder:PATH", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(__doc__, default_dataset="folder:"))
