"""Whole training step, ResNet-18 (CIFAR stem): cupycnn against PyTorch on the same hardware,
batch and precision, in one run.

    python benchmarks/resnet18_step.py --device cuda --batch 128      # against PyTorch on the GPU
    python benchmarks/resnet18_step.py --device numpy --batch 32      # against PyTorch on the CPU

A step is forward, softmax cross-entropy, backward and an SGD (momentum 0.9, weight decay 5e-4)
update on a batch of random 32x32 images (fresh each step from a pool, never zeros). Both sides
are warmed up (kernel compilation, cuDNN autotuning) and then timed over --steps steps: on cuda
with events around the timed region (or a synchronize before reading the clock), the median of
--repeats timings reported. PyTorch runs in float32 with TF32 off (cupycnn's kernels are plain
FP32) and, for reference, with TF32 on (PyTorch's default for convolutions). On the CPU, PyTorch
gets the same number of threads NumPy's BLAS has.
"""
import argparse
import json
import os
import statistics
import sys

import timing     # benchmarks/timing.py: this script's folder is on sys.path


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "sim", "numpy"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json", help="also write the figures to this file")
    return p.parse_args()


def time_steps(step, sync, steps, warmup, repeats):
    for _ in range(warmup):
        step()
    sync()
    return statistics.median([timing.wall_seconds(step, steps, sync) for _ in range(repeats)])


def cupycnn_step_time(args, pool):
    import cupycnn
    from cupycnn import models, optim
    from cupycnn.layers import without_input_grad
    from cupycnn.losses import SoftmaxCrossEntropy
    cupycnn.use(args.device)
    cupycnn.manual_seed(0)
    model = models.resnet18(num_classes=10, stem="cifar")
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss = SoftmaxCrossEntropy()
    images = [cupycnn.asarray(x) for x, _ in pool]
    labels = [cupycnn.asarray(y) for _, y in pool]
    counter = [0]

    def step():
        k = counter[0] % len(images)
        counter[0] += 1
        logits = model.forward(images[k], training=True)
        loss.forward(logits, labels[k])
        with without_input_grad(model):      # as Trainer: the images' gradient is not read
            model.backward(loss.backward())
        optimizer.step()

    return time_steps(step, cupycnn.synchronize, args.steps, args.warmup, args.repeats)


def torch_resnet18(torch, num_classes=10):
    """ResNet-18 with the CIFAR stem in torch.nn: cupycnn.models.resnet18(stem="cifar")'s
    layers, in the same order."""
    nn = torch.nn

    def block(cin, cout, stride):
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(cout)
                self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(cout)
                self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                           nn.BatchNorm2d(cout))
                             if stride != 1 or cin != cout else None)

            def forward(self, x):
                y = torch.relu(self.bn1(self.conv1(x)))
                y = self.bn2(self.conv2(y))
                return torch.relu(y + (self.down(x) if self.down is not None else x))
        return Block()

    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512)):
        layers += [block(cin, cout, 1 if i == 0 else 2), block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def torch_step_time(args, pool, tf32):
    import torch
    torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "cuda" else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = torch_resnet18(torch).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss()
    images = [torch.from_numpy(x).to(device) for x, _ in pool]
    labels = [torch.from_numpy(y.astype("int64")).to(device) for _, y in pool]
    counter = [0]

    def step():
        k = counter[0] % len(images)
        counter[0] += 1
        optimizer.zero_grad(set_to_none=True)
        criterion(model(images[k]), labels[k]).backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return time_steps(step, sync, args.steps, args.warmup, args.repeats)


def main():
    args = parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    import numpy as np
    rng = np.random.default_rng(0)
    pool = [(rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32),
             rng.integers(0, 10, args.batch).astype(np.int32)) for _ in range(4)]
    rows = []
    seconds = cupycnn_step_time(args, pool)
    rows.append(("cupycnn", args.device, "fp32", seconds))
    if not args.no_torch:
        try:
            rows.append(("pytorch", "cuda" if args.device == "cuda" else "cpu", "fp32",
                         torch_step_time(args, pool, tf32=False)))
            if args.device == "cuda":
                rows.append(("pytorch", "cuda", "tf32", torch_step_time(args, pool, tf32=True)))
        except ImportError:
            print("PyTorch is not installed: no baseline", file=sys.stderr)
    base = rows[0][3]
    print(f"ResNet-18 (CIFAR stem) training step, batch {args.batch}, median of "
          f"{args.repeats} x {args.steps} steps, {args.threads} CPU threads")
    print(f"{'framework':<10} {'device':<7} {'math':<5} {'ms/step':>9} {'images/s':>10} "
          f"{'vs cupycnn':>11}")
    for name, device, math, s in rows:
        print(f"{name:<10} {device:<7} {math:<5} {1e3 * s:>9.1f} {args.batch / s:>10.1f} "
              f"{base / s:>10.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "rows": rows, "threads": args.threads}, f)


if __name__ == "__main__":
    main()
