"""Data-parallel scaling: training throughput at 1, 2, 4, ... ranks.

    python examples/scaling_benchmark.py --ranks 1,2,4,8                  # ResNet-18, GPUs
    python examples/scaling_benchmark.py --ranks 1,2,4 --device numpy --model small \\
        --global-batch 64 --steps 8                                        # CPU ranks

For each rank count k the script starts `mpiexec -n k` on itself in worker mode (the mpiexec
beside this Python, or --mpiexec). Every worker builds the model (--model; default ResNet-18
with the CIFAR stem) on synthetic CIFAR-shaped data (random 3x32x32 images and labels, made on
the device once), then runs --warmup steps and times --steps training steps (forward, loss,
backward with the bucketed all-reduce, optimizer step, and a device synchronisation at the
end). A rank's time is from a barrier to its last step's end; the step time is the largest over
the ranks (MPI max), since the slowest rank sets the pace. Then the same steps without any
communication (each rank alone, plain backward, same per-rank batch) give the compute time per
step: what is left is the communication the overlap did not hide, plus contention between
ranks sharing a machine.

Strong scaling (default): a fixed --global-batch split among the ranks, so the per-rank batch
shrinks as ranks are added. Weak scaling: --per-rank-batch fixed, the global batch grows.

Printed: a Markdown table (ranks, per-rank and global batch, images/s from rank 0, speedup over
the first rank count, efficiency = speedup / (ranks / first ranks), step and compute-only
times), and a plot (PNG, --plot) of images/s and efficiency against ranks.

On CPU ranks (sim, numpy) each worker gets --threads-per-rank BLAS/OpenMP threads (default 1,
so that k ranks use k cores); more ranks than cores share them, and the figures say nothing
about GPUs, where each rank has a GPU of its own and NCCL moves the gradients.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULT_TAG = "SCALING_RESULT "


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", default="1,2,4", help="rank counts, comma-separated")
    parser.add_argument("--model", default="resnet18", choices=["resnet18", "simple_cnn", "small"],
                        help="resnet18 (CIFAR stem, 11.2M parameters), simple_cnn (the Keras "
                             "CIFAR CNN), small (simple_cnn with 16/32/64 filters, one conv "
                             "per block: for CPU ranks)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--global-batch", type=int, default=None,
                       help="strong scaling: this batch split among the ranks (default 256)")
    batch.add_argument("--per-rank-batch", type=int, default=None,
                       help="weak scaling: each rank's batch (the global batch grows)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="cuda", choices=["cuda", "sim", "numpy"])
    parser.add_argument("--bucket-mb", type=float, default=25.0, help="gradient bucket size")
    parser.add_argument("--sync-bn", action="store_true", help="synchronised batchnorm")
    parser.add_argument("--threads-per-rank", type=int, default=1,
                        help="BLAS/OpenMP threads per rank on CPU devices")
    parser.add_argument("--plot", default="runs/scaling_benchmark.png", help="PNG to write")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--mpiexec", default=str(Path(sys.executable).parent / "mpiexec"),
                        help="the mpiexec to start the workers with (default: the one beside "
                             "this Python, from the mpich wheel of the mpi extra)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.global_batch is None and args.per_rank_batch is None:
        args.global_batch = 256
    return args


# ---------------------------------------------------------------------------------- worker

def build_model(name):
    from cupycnn.models import resnet18, simple_cnn
    if name == "resnet18":
        return resnet18(num_classes=10, stem="cifar")
    if name == "simple_cnn":
        return simple_cnn(num_classes=10)
    return simple_cnn(num_classes=10, widths=(16, 32, 64), convs_per_block=1, hidden=64)


def worker(args):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source tree
    import numpy as np

    import cupycnn
    from cupycnn import distributed
    from cupycnn.losses import SoftmaxCrossEntropy
    from cupycnn.optim import SGD

    cupycnn.use(args.device)
    ctx = distributed.init(device=args.device, bucket_bytes=int(args.bucket_mb * 2**20))
    with ctx.abort_on_error():
        if args.per_rank_batch is not None:
            batch, global_batch = args.per_rank_batch, args.per_rank_batch * ctx.size
        else:
            batch, global_batch = ctx.per_rank_batch(args.global_batch), args.global_batch
        cupycnn.manual_seed(0)
        model = build_model(args.model)
        optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        ctx.broadcast_parameters(model)
        if args.sync_bn:
            ctx.synchronize_batchnorm(model)
        ctx.check_consistency(model, optimizer, global_batch)
        rng = np.random.default_rng(ctx.rank)
        x = cupycnn.asarray(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
        y = cupycnn.asarray(rng.integers(0, 10, batch).astype(np.int32))
        loss_fn = SoftmaxCrossEntropy()

        def step(communicate):
            logits = model.forward(x, training=True)
            loss_fn.forward(logits, y)
            dy = loss_fn.backward()
            if communicate:
                ctx.backward(model, dy, optimizer)
            else:
                model.backward(dy)
            optimizer.step()

        def timed(communicate):
            for _ in range(args.warmup):
                step(communicate)
            cupycnn.synchronize()
            ctx.barrier()
            start = time.perf_counter()
            for _ in range(args.steps):
                step(communicate)
            cupycnn.synchronize()
            mine = time.perf_counter() - start
            return mine if ctx.mpi is None else ctx.mpi.allreduce(mine, op=_mpi_max())

        seconds = timed(communicate=True)
        grad_scale = optimizer.grad_scale
        if args.sync_bn:
            distributed.local_batchnorm(model)       # the baseline: no collective at all
        optimizer.grad_scale = 1.0
        compute = timed(communicate=False)
        if ctx.is_root:
            result = {"ranks": ctx.size, "per_rank_batch": batch, "global_batch": global_batch,
                      "steps": args.steps, "seconds": seconds, "compute_seconds": compute,
                      "images_per_second": global_batch * args.steps / seconds,
                      "step_ms": 1e3 * seconds / args.steps,
                      "compute_step_ms": 1e3 * compute / args.steps,
                      "parameters": model.num_parameters(), "backend": ctx.backend,
                      "grad_scale": grad_scale,
                      "buckets": len(ctx._buckets.buckets) if ctx._buckets else 0}
            print(RESULT_TAG + json.dumps(result), flush=True)


def _mpi_max():
    from mpi4py import MPI
    return MPI.MAX


# ------------------------------------------------------------------------------ controller

def run_workers(args, ranks):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.device != "cuda":
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads_per_rank)
    passed = [a for a in sys.argv[1:] if a != "--worker"]
    command = [args.mpiexec, "-n", str(ranks), sys.executable, str(Path(__file__).resolve()),
               "--worker", *passed]
    print(f"$ {' '.join(command[:3])} python {Path(__file__).name} --worker "
          f"{' '.join(passed)}", flush=True)
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"the {ranks}-rank run failed (exit status {out.returncode})")
    for line in out.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise SystemExit(f"the {ranks}-rank run printed no result:\n{out.stdout}{out.stderr}")


def table(results):
    base = results[0]
    rows = ["| ranks | per-rank batch | global batch | images/s | speedup | efficiency | "
            "step ms | compute-only step ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        speedup = r["images_per_second"] / base["images_per_second"]
        r["speedup"] = speedup
        r["efficiency"] = speedup / (r["ranks"] / base["ranks"])
        rows.append(f"| {r['ranks']} | {r['per_rank_batch']} | {r['global_batch']} | "
                    f"{r['images_per_second']:.1f} | {speedup:.2f} | {r['efficiency']:.2f} | "
                    f"{r['step_ms']:.1f} | {r['compute_step_ms']:.1f} |")
    return "\n".join(rows)


def plot(results, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ranks = [r["ranks"] for r in results]
    rates = [r["images_per_second"] for r in results]
    ideal = [rates[0] * k / ranks[0] for k in ranks]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(ranks, rates, "o-", label="measured")
    left.plot(ranks, ideal, "--", color="gray", label="linear")
    left.set_xlabel("ranks")
    left.set_ylabel("images/s")
    left.set_xticks(ranks)
    left.legend()
    right.plot(ranks, [r["efficiency"] for r in results], "o-")
    right.axhline(1.0, color="gray", linestyle="--")
    right.set_xlabel("ranks")
    right.set_ylabel("efficiency (speedup / ranks)")
    right.set_ylim(0, 1.1)
    right.set_xticks(ranks)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    ranks = [int(k) for k in args.ranks.split(",")]
    scaling = (f"global batch {args.global_batch}" if args.per_rank_batch is None
               else f"per-rank batch {args.per_rank_batch}")
    started = datetime.datetime.now().astimezone()
    print(f"scaling benchmark: {args.model} on {args.device}, {scaling}, {args.steps} timed "
          f"steps after {args.warmup}, buckets of {args.bucket_mb} MB"
          + (", synchronised batchnorm" if args.sync_bn else "")
          + (f", {args.threads_per_rank} thread(s) per rank" if args.device != "cuda" else ""),
          flush=True)
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {started:%Y-%m-%d %H:%M %Z}", flush=True)
    results = [run_workers(args, k) for k in ranks]
    text = table(results)
    print(text)
    title = (f"{args.model} on {args.device} ({results[0]['backend']}), {scaling}, "
             f"{started:%Y-%m-%d}")
    plot(results, args.plot, title)
    print(f"plot: {args.plot}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results},
                                              indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
