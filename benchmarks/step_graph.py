"""The whole training step without Python in the way: cupycnn eager, cupycnn with its step
recorded once and replayed (a CUDA graph), PyTorch eager and PyTorch with a CUDA graph, on the
same ResNet-18 (CIFAR stem), batch, precision and optimizer, in one process.

    python benchmarks/step_graph.py --device cuda --batch 256 512 --precision fp32
    python benchmarks/step_graph.py --device sim --batch 2 --steps 1 --warmup 0 --repeats 1 \
        --no-torch --launch-only          # the script's own test: launches checked, not run

A step is forward, softmax cross-entropy, backward and SGD (momentum 0.9, Nesterov off,
weight decay 5e-4) on a batch of 32x32 images, taken in turn from a pool of 4 random batches.
The graphed variants copy the batch into their input buffers first (part of the timed step);
the eager ones read it where it lies.

- cupycnn eager: `Trainer`'s eager step (every array from CuPy's pool; a few hundred launches
  from Python).
- cupycnn graph: `cupycnn.graph.GraphedStep`: the step traced once (the static memory plan),
  captured once (CuPy stream capture), then one `Graph.launch` per step; the optimizer's
  hyperparameters and step number are written into device memory before each replay.
- cupycnn graph unfolded (--unfolded-statistics): the graphed step with every
  batchnorm reading its input once more for its statistics (Conv2D.feed_statistics_to(None)),
  the baseline of the convolutions' statistics epilogue (docs/STEP.md).
- PyTorch eager: the same network in torch.nn, cuDNN autotuned (`cudnn.benchmark`).
- PyTorch graph: the whole step captured with `torch.cuda.graph` (forward, backward and
  optimizer.step(), static input tensors), as PyTorch's documentation shows for whole-network
  capture.

Precision: fp32 (TF32 off on both sides), tf32, bf16 (cupycnn.set_precision where the tensor-core
kernels are; PyTorch: allow_tf32, or torch.autocast(dtype=torch.bfloat16)).

Timing: variants interleaved, `--repeats` rounds of `--steps` steps each after `--warmup`
steps, CUDA events around each round, the median round reported (this machine may be shared).
Memory: each variant is built and run once on its own first; peak = the growth of CuPy's pool
(after freeing its cached blocks) or torch.cuda.max_memory_allocated(); cupycnn's plan reports
its arena beside it. Figures go to --json for benchmarks/gpu_session.sh.
"""
import argparse
import json
import statistics
import sys

import timing     # benchmarks/timing.py: this script's folder is on sys.path


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "sim"])
    p.add_argument("--batch", type=int, nargs="+", default=[256, 512])
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "tf32", "bf16"],
                   help="one or more; each is measured on its own (both sides at it)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--unfolded-statistics", action="store_true",
                   help="also the graphed step with the batchnorm statistics out of the "
                        "convolutions' epilogue")
    p.add_argument("--launch-only", action="store_true",
                   help="sim: check every launch but run none (cupycnn.sim.dry_run), to test "
                        "the script in seconds; the figures mean nothing then")
    p.add_argument("--json", help="write the figures to this file")
    return p.parse_args()


# --------------------------------------------------------------------------------- cupycnn

def _precision_context(precision):
    import cupycnn
    return cupycnn.set_precision(precision)


class CupycnnVariant:
    def __init__(self, args, batch, pool, graphed, fold_statistics=True):
        import cupycnn
        from cupycnn import models, optim
        from cupycnn.graph import GraphedStep
        from cupycnn.layers import Conv2D
        from cupycnn.losses import SoftmaxCrossEntropy
        self.name = ("cupycnn graph" if graphed else "cupycnn eager") + (
            "" if fold_statistics else " unfolded")
        self.graphed = graphed
        cupycnn.manual_seed(0)
        self.model = models.resnet18(num_classes=10, stem="cifar")
        if not fold_statistics:
            for layer in self.model.layers():
                if isinstance(layer, Conv2D):
                    layer.feed_statistics_to(None)
        self.optimizer = optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9,
                                   weight_decay=5e-4)
        self.loss = SoftmaxCrossEntropy()
        self.images = [cupycnn.asarray(x) for x, _ in pool]
        self.labels = [cupycnn.asarray(y) for _, y in pool]
        self.x = cupycnn.devices.empty(self.images[0].shape, self.images[0].dtype)
        self.y = cupycnn.devices.empty(self.labels[0].shape, self.labels[0].dtype)
        self.k = 0
        self.step_fn = GraphedStep(lambda: self._body(self.x, self.y)) if graphed else None

    def _body(self, x, y):
        from cupycnn.ops._storage import as_activation
        logits = self.model.forward(as_activation(x), training=True)   # bf16: BF16 storage
        loss = self.loss.forward(logits, y)
        self.model.backward(self.loss.backward())
        self.optimizer.launch_step()
        return loss

    def step(self):
        k = self.k % len(self.images)
        self.k += 1
        self.optimizer.prepare_step()
        if self.graphed:
            self.x[...] = self.images[k]
            self.y[...] = self.labels[k]
            self.step_fn()
        else:
            self._body(self.images[k], self.labels[k])

    def plan_bytes(self):
        plan = self.step_fn.plan if self.graphed else None
        return None if plan is None else plan.arena_bytes


# --------------------------------------------------------------------------------- PyTorch

class TorchVariant:
    def __init__(self, args, batch, pool, graphed):
        import torch
        from resnet18_step import torch_resnet18       # the same network as that benchmark's
        self.torch = torch
        self.name = "pytorch graph" if graphed else "pytorch eager"
        self.graphed = graphed
        tf32 = args.precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
        self.autocast = args.precision == "bf16"
        torch.manual_seed(0)
        self.model = torch_resnet18(torch).cuda()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9,
                                         weight_decay=5e-4)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.images = [torch.from_numpy(x).cuda() for x, _ in pool]
        self.labels = [torch.from_numpy(y.astype("int64")).cuda() for _, y in pool]
        self.k = 0
        if graphed:
            self._capture()

    def _forward_backward(self, x, y):
        torch = self.torch
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast,
                            cache_enabled=False):
            loss = self.criterion(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return loss

    def _capture(self):
        torch = self.torch
        self.x, self.y = self.images[0].clone(), self.labels[0].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):                  # warm-up on a side stream, as documented
            for _ in range(3):
                self.optimizer.zero_grad(set_to_none=True)
                self._forward_backward(self.x, self.y)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self._forward_backward(self.x, self.y)

    def step(self):
        k = self.k % len(self.images)
        self.k += 1
        if self.graphed:
            self.x.copy_(self.images[k])
            self.y.copy_(self.labels[k])
            self.graph.replay()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self._forward_backward(self.images[k], self.labels[k])

    def plan_bytes(self):
        return None


# ---------------------------------------------------------------------------------- timing

class Clock:
    """Seconds of device time for a block of steps: CUDA events on cuda, the wall clock on sim."""

    def __init__(self, device):
        self.device = device

    def time(self, fn, steps):
        if self.device != "cuda":
            return timing.wall_seconds(fn, steps)      # the CPU devices do not queue
        return timing.gpu_seconds(fn, steps)


def synchronize(device):
    if device == "cuda":
        import cupy
        cupy.cuda.Device().synchronize()


def measure_memory(device, build, warmup):
    """(variant, peak bytes): build it and run `warmup` steps on its own."""
    if device != "cuda":
        variant = build()
        for _ in range(warmup):
            variant.step()
        return variant, None
    import cupy
    pool = cupy.get_default_memory_pool()
    synchronize(device)
    pool.free_all_blocks()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        torch_before = torch.cuda.max_memory_allocated()
    before = pool.total_bytes()
    variant = build()
    for _ in range(warmup):
        variant.step()
    synchronize(device)
    if isinstance(variant, TorchVariant):
        return variant, torch.cuda.max_memory_allocated() - torch_before
    return variant, pool.total_bytes() - before


def run_batch(args, batch):
    import numpy as np
    rng = np.random.default_rng(batch)
    size = args.image_size
    pool = [(rng.standard_normal((batch, 3, size, size)).astype(np.float32),
             rng.integers(0, 10, batch).astype(np.int32)) for _ in range(4)]
    builders = [lambda: CupycnnVariant(args, batch, pool, graphed=False),
                lambda: CupycnnVariant(args, batch, pool, graphed=True)]
    if args.unfolded_statistics:
        builders.append(lambda: CupycnnVariant(args, batch, pool, graphed=True,
                                               fold_statistics=False))
    if not args.no_torch:
        try:
            import torch  # noqa: F401
            builders += [lambda: TorchVariant(args, batch, pool, graphed=False),
                         lambda: TorchVariant(args, batch, pool, graphed=True)]
        except ImportError:
            print("PyTorch is not installed: no baseline", file=sys.stderr)
    # A graphed cupycnn step needs two calls (trace, capture) before it replays.
    warmup = max(args.warmup, 2)
    variants, memory = [], {}
    for build in builders:
        variant, peak = measure_memory(args.device, build, warmup)
        variants.append(variant)
        memory[variant.name] = peak
    clock = Clock(args.device)
    times = {v.name: [] for v in variants}
    for _ in range(args.repeats):                      # interleaved rounds
        for v in variants:
            times[v.name].append(clock.time(v.step, args.steps))
    rows = []
    for v in variants:
        seconds = statistics.median(times[v.name])
        rows.append({"name": v.name, "ms_per_step": 1e3 * seconds,
                     "images_per_second": batch / seconds,
                     "peak_bytes": memory[v.name], "plan_bytes": v.plan_bytes()})
    for v in variants:
        if getattr(v, "graphed", False) and isinstance(v, CupycnnVariant):
            assert v.step_fn.phase == "replayed"
    return rows


def main():
    args = parse_args()
    import contextlib
    import cupycnn
    cupycnn.use(args.device)
    if args.launch_only and args.device != "sim":
        raise SystemExit("--launch-only is for --device sim")
    device = "a GPU" if args.device == "cuda" else "sim (the emulator: a test of the script)"
    if args.device == "cuda":
        import cupy
        device = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    figures = {}
    for precision in args.precision:
        args_p = argparse.Namespace(**{**vars(args), "precision": precision})
        print(f"ResNet-18 (CIFAR stem) training step on {device}, precision {precision}, "
              f"median of {args.repeats} interleaved rounds of {args.steps} steps")
        for batch in args.batch:
            dry = cupycnn.sim.dry_run() if args.launch_only else contextlib.nullcontext()
            with _precision_context(precision), dry:
                rows = run_batch(args_p, batch)
            figures.update(report(precision, batch, rows))
            if args.json:       # after each batch: a session cut short keeps what it measured
                with open(args.json, "w") as f:
                    json.dump(figures, f)
        print()


def report(precision, batch, rows):
    """Print one batch's table; return its figures."""
    mib = 2.0 ** 20
    figures = {}
    width = max(15, *(len(r["name"]) for r in rows))
    print(f"\nbatch {batch}")
    print(f"{'variant':<{width}} {'ms/step':>9} {'images/s':>10} {'peak MiB':>9} "
          f"{'plan MiB':>9} {'vs pytorch eager':>17} {'vs pytorch graph':>17}")
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        ratios = []
        for base in ("pytorch eager", "pytorch graph"):
            b = by_name.get(base)
            ratios.append(f"{r['images_per_second'] / b['images_per_second']:.2f}x"
                          if b else "-")
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / mib:.0f}"
        plan = "-" if r["plan_bytes"] is None else f"{r['plan_bytes'] / mib:.0f}"
        print(f"{r['name']:<{width}} {r['ms_per_step']:>9.2f} {r['images_per_second']:>10.0f} "
              f"{peak:>9} {plan:>9} {ratios[0]:>17} {ratios[1]:>17}", flush=True)
        key = f"{precision}.b{batch}.{r['name'].replace(' ', '_')}"
        figures[f"{key}.images_per_second"] = round(r["images_per_second"], 1)
        if r["peak_bytes"] is not None:
            figures[f"{key}.peak_mib"] = round(r["peak_bytes"] / mib, 1)
    return figures

if __name__ == "__main__":
    main()
