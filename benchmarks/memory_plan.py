"""The static memory plan of a training step, computed without a GPU: what one ResNet-18 step
(CIFAR stem, SGD with momentum) allocates, and what the plan needs for it.

    python benchmarks/memory_plan.py                     # batch 256 and 512, fused and unfused
    python benchmarks/memory_plan.py --batch 256 --largest 10

Precision bf16: the activations and their gradients in BF16 storage (the input cast as the
trainer casts it; conv and dense through the tensor-core kernels at BF16). The step is traced on
the sim device with its launches checked but not run
(`cupycnn.sim.dry_run`): a plan depends on the shapes and the order of allocations and
releases, never on the values, so it is the plan the cuda device makes for the same step
(the same wrappers allocate the same arrays; tests/test_plan_graph.py checks that a dry-run plan
is the real one). Columns, in MiB:

    arena       the plan's one allocation: every activation, gradient and workspace of the step
    live peak   the most bytes alive at one moment of the step (no placement can do better)
    no reuse    every allocation of the step added up (a step that never freed anything)
    persistent  what lives outside the step: parameters, their gradients, the momentum
                buffer (the optimizer's flat buffers) and the batch itself
"""
import argparse
import json


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[256, 512])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--largest", type=int, default=0, help="also list the N largest buffers")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"],
                   choices=["fp32", "tf32", "bf16"],
                   help="bf16: activations in BF16 storage (the input cast, as the trainer does)")
    p.add_argument("--json", help="write the figures to this file")
    return p.parse_args()


def trace_step(batch, size, fused, precision):
    import numpy as np
    import cupycnn
    from cupycnn import models, optim, plan, sim
    from cupycnn.losses import SoftmaxCrossEntropy
    from cupycnn.ops._storage import as_activation
    cupycnn.use("sim")
    cupycnn.manual_seed(0)
    model = models.resnet18(num_classes=10, stem="cifar", fused=fused)
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss = SoftmaxCrossEntropy()
    x = cupycnn.asarray(np.zeros((batch, 3, size, size), np.float32))
    y = cupycnn.asarray(np.zeros(batch, np.int32))

    def body():
        logits = model.forward(as_activation(x), training=True)
        value = loss.forward(logits, y)
        model.backward(loss.backward())
        optimizer.launch_step()
        return value

    optimizer.prepare_step()
    with sim.dry_run(), cupycnn.set_precision(precision):
        _, p = plan.trace(body)
    persistent = optimizer.flat_params.nbytes + optimizer.flat_grads.nbytes + \
        sum(b.nbytes for b in optimizer.flat_state.values()) + x.nbytes + y.nbytes
    return p, persistent


def main():
    args = parse_args()
    mib = 2.0 ** 20
    figures = {}
    print(f"ResNet-18 (CIFAR stem, {args.image_size}x{args.image_size}), one training step "
          f"(SGD with momentum), the static memory plan (MiB)")
    print(f"{'batch':>5} {'precision':<9} {'epilogue':<9} {'buffers':>7} {'arena':>8} "
          f"{'live peak':>9} {'no reuse':>9} {'persistent':>10} {'total':>8}")
    for batch in args.batch:
        for precision in args.precision:
            for fused in (True, False):
                p, persistent = trace_step(batch, args.image_size, fused, precision)
                kind = "fused" if fused else "unfused"
                print(f"{batch:>5} {precision:<9} {kind:<9} {len(p):>7} "
                      f"{p.arena_bytes / mib:>8.1f} {p.live_peak_bytes / mib:>9.1f} "
                      f"{p.total_bytes / mib:>9.1f} {persistent / mib:>10.1f} "
                      f"{(p.arena_bytes + persistent) / mib:>8.1f}")
                key = f"b{batch}.{precision}.{kind}"
                figures[f"{key}.arena_mib"] = round(p.arena_bytes / mib, 1)
                figures[f"{key}.total_mib"] = round((p.arena_bytes + persistent) / mib, 1)
                if args.largest:
                    print(p.describe(args.largest))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f)


if __name__ == "__main__":
    main()
