"""The CPU path's tuning choices, each against its alternative, interleaved in one process.

    python benchmarks/cpu_choices.py layouts               # every conv layer, both column layouts
    python benchmarks/cpu_choices.py layouts --resnet      # ResNet-18's layers instead of digits'
    python benchmarks/cpu_choices.py threshold --threads 2 # MIN_TASK_BYTES against no threshold
    python benchmarks/cpu_choices.py together --threads 2  # a conv's two gradients on two threads
    python benchmarks/cpu_choices.py together --model resnet18 --rounds 5

layouts: for each convolution layer of the digits network (or ResNet-18, CIFAR stem, batch 32),
forward + input gradient + weight gradient (from the kept columns) with cupycnn.cpu.conv2d.LAYOUT
forced to "planes" (the bordered NCHW planes: wide or narrow columns) and to "last"
(channels-last columns), alternating which goes first; prints each median, their ratio and which
the rule (conv2d._last) picks. This is what the rule's constants were chosen from.

threshold / together: the whole training step of one network (benchmarks/cpu_step.py's, on the
numpy device) under two settings switched in process between samples: parallel.MIN_TASK_BYTES
at its value against 1 byte (every op split over the threads however small); Conv2D.backward's
parallel.run_together against calling the two gradients one after the other. A sample is a
block of steps (digits) or one step (resnet18); medians over the rounds.

The same machine-noise caveat as cpu_step.py: the ratio of one run is what to quote.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))     # run from a source tree
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import cupycnn  # noqa: E402
from cupycnn import cpu  # noqa: E402
from cupycnn.cpu import conv2d, parallel  # noqa: E402

DIGITS_LAYERS = [("conv1", 1, 32, 8, 1, 3), ("conv2", 32, 32, 8, 1, 3),
                 ("conv3", 32, 64, 4, 1, 3), ("conv4", 64, 64, 4, 1, 3)]
RESNET_LAYERS = [("stem", 3, 64, 32, 1, 3), ("layer1", 64, 64, 32, 1, 3),
                 ("layer2.0", 64, 128, 32, 2, 3), ("layer2", 128, 128, 16, 1, 3),
                 ("layer2 shortcut", 64, 128, 32, 2, 1), ("layer3.0", 128, 256, 16, 2, 3),
                 ("layer3", 256, 256, 8, 1, 3), ("layer4.0", 256, 512, 8, 2, 3),
                 ("layer4", 512, 512, 4, 1, 3)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("choice", choices=["layouts", "threshold", "together"])
    p.add_argument("--resnet", action="store_true", help="layouts: ResNet-18's layers")
    p.add_argument("--model", choices=["digits", "resnet18"], default="digits")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--block", type=int, default=20, help="digits steps per sample")
    return p.parse_args(argv)


def layouts(args):
    rng = np.random.default_rng(0)
    print("| layer | C_in -> C_out, size, stride, kernel | planes ms | channels-last ms | "
          "planes / last | the rule picks (forward, input gradient) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, c, o, h, s, k in RESNET_LAYERS if args.resnet else DIGITS_LAYERS:
        n, p = 32, k // 2
        ho = (h + 2 * p - k) // s + 1
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        w = rng.standard_normal((o, c, k, k)).astype(np.float32)
        dy = rng.standard_normal((n, o, ho, ho)).astype(np.float32)

        def step():
            cache = {}
            conv2d.conv2d_forward(x, w, None, (s, s), (p, p), cache=cache)
            conv2d.conv2d_backward_input(dy, w, x.shape, (s, s), (p, p))
            conv2d.conv2d_backward_weight(dy, x, w.shape, (s, s), (p, p), cache=cache)
        times = {"planes": [], "last": []}
        try:
            for r in range(args.rounds + 1):
                for layout in ("planes", "last") if r % 2 else ("last", "planes"):
                    conv2d.LAYOUT = layout
                    start = time.perf_counter()
                    step()
                    if r:                                  # round 0 warms the buffers
                        times[layout].append(time.perf_counter() - start)
        finally:
            conv2d.LAYOUT = None
        planes, last = (1e3 * statistics.median(times[key]) for key in ("planes", "last"))
        rule = ("last" if conv2d._last(c, ho) else "planes",
                "last" if conv2d._last(o, h) else "planes")
        print(f"| {name} | {c} -> {o}, {h}x{h}, {s}, {k}x{k} | {planes:.2f} | {last:.2f} | "
              f"**{planes / last:.2f}x** | {rule[0]}, {rule[1]} |")


def settings(args):
    """The two settings of a step choice: (name, apply) pairs, the default first."""
    if args.choice == "threshold":
        default = parallel.MIN_TASK_BYTES

        def threshold(value):
            return lambda: setattr(parallel, "MIN_TASK_BYTES", value)
        return [(f"MIN_TASK_BYTES = {default}", threshold(default)),
                ("no threshold (every op split)", threshold(1))]
    together = parallel.run_together

    def one_after_the_other(tasks, nbytes=None):
        return [task() for task in tasks]
    return [("run_together", lambda: setattr(parallel, "run_together", together)),
            ("one after the other", lambda: setattr(parallel, "run_together",
                                                    one_after_the_other))]


def step_choice(args):
    import cpu_step
    cupycnn.use("numpy")
    step, _ = cpu_step.cupycnn_stepper(args.model, cpu_step.data_pool(
        cpu_step.input_shape(args.model)))
    count = args.block if args.model == "digits" else 1
    choices = settings(args)
    times = {name: [] for name, _ in choices}
    try:
        for r in range(args.rounds + 1):
            for name, apply in choices if r % 2 else choices[::-1]:
                apply()
                step()                                     # the setting's buffers, warm
                start = time.perf_counter()
                for _ in range(count):
                    step()
                if r:
                    times[name].append((time.perf_counter() - start) / count)
    finally:
        choices[0][1]()
    base = statistics.median(times[choices[0][0]])
    print(f"{args.model}, {args.threads} thread{'s' if args.threads > 1 else ''}, "
          f"{args.rounds} rounds:")
    for i, (name, samples) in enumerate(times.items()):
        median = statistics.median(samples)
        print(f"  {name}: {1e3 * median:.2f} ms/step (min {1e3 * min(samples):.2f})" +
              (f"; {choices[0][0]} is {median / base:.2f}x faster" if i else ""))


def main(argv=None):
    from threadpoolctl import threadpool_limits
    args = parse_args(argv)
    print(f"`python benchmarks/cpu_choices.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
          f", {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    cpu.set_num_threads(args.threads)
    try:
        with threadpool_limits(args.threads, user_api="blas"):
            (layouts if args.choice == "layouts" else step_choice)(args)
    finally:
        cpu.set_num_threads(None)


if __name__ == "__main__":
    main()
