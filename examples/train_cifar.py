"""Train a CNN or ResNet on CIFAR-10 (or digits, a synthetic task, an image folder), on one
process or data-parallel across GPUs or CPU ranks:

    python examples/train_cifar.py --dataset digits --device numpy     # any CPU, no download
    python examples/train_cifar.py                                     # CIFAR-10, ResNet-18
    mpirun -n 4 python examples/train_cifar.py                         # the same on 4 GPUs

Checkpoints, logs (CSV, TensorBoard) and pictures (curves, confusion matrix, sample
predictions) go to --log-dir. `--help` lists every option; the recipes are in
cupycnn/cli.py (DATASET_DEFAULTS).
"""
from cupycnn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(__doc__, default_dataset="cifar10"))
