"""The memory traffic the batchnorm statistics folded into the convolutions' epilogue take out
of a ResNet-18 training step, counted from the shapes (no GPU; docs/STEP.md, "The batchnorm
statistics in the convolution's epilogue").

    python benchmarks/folded_statistics.py                    # batch 256, bf16 and float32
    python benchmarks/folded_statistics.py --batch 512 --image-size 32

For every Conv2D that feeds its batchnorm (Conv2D.feed_statistics_to, as models.resnet18 links
them): removed, the batchnorm's read of the convolution's output for its sums (2 or 4 bytes per
value: BF16 or float32 storage); added, the workspace of per-block partial sums the epilogue
writes and batchnorm_combine_partials reads back (two doubles per output channel per block of
pixels, the tile ops/tiles.py chooses for that convolution; none with a single block, whose
pairs are the sums). The time is that traffic at the HBM bandwidth given (default 4.8 TB/s, an
H200's), a floor, not a measurement: benchmarks/step_graph.py --unfolded-statistics times it.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source tree


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--bandwidth", type=float, default=4.8e12, help="bytes per second")
    return p.parse_args()


def linked_outputs(image_size):
    """(name, C_out, H_out, W_out) of every convolution of resnet18 (CIFAR stem) that feeds a
    batchnorm, from one evaluation forward of a 1-image batch on the numpy device."""
    import numpy as np
    import cupycnn
    from cupycnn import models
    from cupycnn.layers import Conv2D
    cupycnn.use("numpy")
    model = models.resnet18(num_classes=10, stem="cifar")
    shapes = {}
    for name, layer in model._named_layers():
        if isinstance(layer, Conv2D) and layer.statistics_for is not None:
            layer.add_forward_hook(
                lambda _, x, y, name=name: shapes.__setitem__(name, tuple(y.shape[1:])))
    model.forward(np.zeros((1, 3, image_size, image_size), np.float32), training=False)
    return [(name,) + shape for name, shape in shapes.items()]


def main():
    args = parse_args()
    from cupycnn.ops import tiles
    from cupycnn.runtime import ceil_div
    mib = 2.0 ** 20
    rows = linked_outputs(args.image_size)
    values = workspace = 0
    for _, c, h, w in rows:
        pixels = args.batch * h * w
        values += c * pixels
        blocks = ceil_div(pixels, tiles.choose_tile(c, pixels).bn)
        workspace += 2 * (c * blocks * 2 * 8) if blocks > 1 else 0      # written, then read
    print(f"ResNet-18 (CIFAR stem), batch {args.batch}, {args.image_size}x{args.image_size}: "
          f"{len(rows)} convolutions feed their batchnorm, {values} output values")
    print(f"{'storage':<8} {'read removed MiB':>17} {'workspace MiB':>14} {'net MiB':>8} "
          f"{'net us at ' + format(args.bandwidth / 1e12, 'g') + ' TB/s':>18}")
    for storage, size in (("bf16", 2), ("float32", 4)):
        removed = values * size
        net = removed - workspace
        print(f"{storage:<8} {removed / mib:>17.1f} {workspace / mib:>14.1f} {net / mib:>8.1f} "
              f"{net / args.bandwidth * 1e6:>18.1f}")


if __name__ == "__main__":
    main()
