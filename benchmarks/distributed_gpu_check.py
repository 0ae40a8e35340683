"""On a GPU: the NCCL path of cupycnn.distributed runs, and its results match the MPI path's on
host copies (issue 6: "the NCCL path with one rank, and the overlapped bucket all-reduce, run
and match the MPI path's result").

    python benchmarks/distributed_gpu_check.py                 # one rank, one GPU
    mpiexec -n 2 python benchmarks/distributed_gpu_check.py    # two ranks on two GPUs
    python benchmarks/distributed_gpu_check.py --device sim    # the script itself, on CPU

Checks, each printed PASS or FAIL with its figures (exit status 1 if any fails):
  1. collectives: NCCL all-reduce (float32, float64, int32, int64) and broadcast of device
     arrays against MPI's on host copies of the same arrays; integer values, so exactly;
  2. synchronised batchnorm's all-reduce of [C, 2] float64 sums and the count;
  3. the bucketed all-reduce overlapping backward on ResNet-18 (CIFAR stem, batch --batch per
     rank, buckets of --bucket-mb): every bucket but those holding the stem's gradients launched
     while layers were still to run backward, and the all-reduced flat gradient buffer against
     one MPI all-reduce of a
     host copy of the same rank's plain-backward gradients (exactly with one rank, where both
     are the local gradients; to float32 rounding with more, where NCCL's ring and MPI add in
     different orders); the backward's time with and without the bucketed all-reduce;
  4. a few training steps of a small conv-batchnorm model with synchronised batchnorm, on cuda
     through NCCL, against the same steps on the sim device through MPI (the same CUDA C,
     compiled by NVRTC and by g++): the parameters agree to float32 rounding.

Needs mpi4py (the mpi extra) and NCCL for CuPy (python -m cupyx.tools.install_library
--library nccl --cuda 12.x, or conda's nccl, or the system's libnccl2).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source tree

import cupycnn  # noqa: E402
from cupycnn import distributed  # noqa: E402
from cupycnn.distributed.comm import MpiCommunicator  # noqa: E402
from cupycnn.layers import (BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU,  # noqa: E402
                            Sequential)
from cupycnn.losses import SoftmaxCrossEntropy  # noqa: E402
from cupycnn.models import resnet18  # noqa: E402
from cupycnn.optim import SGD  # noqa: E402

results = []


def report(ctx, name, ok, detail):
    everyone = ctx.allgather(bool(ok))
    ok = all(everyone)
    results.append(ok)
    if ctx.is_root:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}"
              + ("" if ok else f" (failed on ranks {[r for r, o in enumerate(everyone) if not o]})"),
              flush=True)


def check_collectives(ctx, host_comm, rng):
    worst = []
    for dtype in (np.float32, np.float64, np.int32, np.int64):
        host = rng.integers(-1000, 1000, size=1001).astype(dtype)
        device = cupycnn.asarray(host.copy())     # a copy on sim too, where arrays are NumPy
        ctx.allreduce_sum_(device)
        expected = host_comm.allreduce_sum_(host.copy())
        worst.append(bool(np.array_equal(cupycnn.asnumpy(device), expected)))
    host = rng.integers(0, 100, size=(7, 9)).astype(np.float32)
    device = cupycnn.asarray(host.copy())
    ctx.broadcast_(device, root=ctx.size - 1)
    cupycnn.synchronize()
    broadcast_ok = np.array_equal(cupycnn.asnumpy(device),
                                  host_comm.broadcast_(host.copy(), root=ctx.size - 1))
    report(ctx, "collectives", all(worst) and broadcast_ok,
           f"all-reduce float32/float64/int32/int64 exact: {worst}; broadcast exact: "
           f"{broadcast_ok}")


def check_statistics(ctx, host_comm, rng):
    host = rng.integers(-500, 500, size=(64, 2)).astype(np.float64)
    device = cupycnn.asarray(host.copy())
    total, count = ctx.communicator.allreduce_statistics(device, 100)
    expected, expected_count = host_comm.allreduce_statistics(host, 100)
    untouched = np.array_equal(cupycnn.asnumpy(device), host)
    same = np.array_equal(cupycnn.asnumpy(total), expected) and count == expected_count
    report(ctx, "batchnorm statistics", same and untouched,
           f"sums and count exact: {same}; input left alone: {untouched}")


def build(name):
    cupycnn.manual_seed(0)
    if name == "resnet18":
        model = resnet18(num_classes=10, stem="cifar")
        return model, (model.conv1, model.bn1)
    model = small_model()
    return model, (model[0], model[1])


def check_buckets(ctx, host_comm, model_name, batch, bucket_mb, rng):
    model, stem = build(model_name)
    ctx.broadcast_parameters(model)
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = SoftmaxCrossEntropy()
    size = 32 if model_name == "resnet18" else 8
    x = cupycnn.asarray(rng.standard_normal((batch, 3, size, size)).astype(np.float32))
    y = cupycnn.asarray(rng.integers(0, 10, batch).astype(np.int32))

    def timed_backward(backward):
        loss_fn.forward(model.forward(x, training=True), y)
        dy = loss_fn.backward()
        cupycnn.synchronize()
        start = time.perf_counter()
        backward(dy)
        cupycnn.synchronize()
        return time.perf_counter() - start

    plain = [timed_backward(model.backward) for _ in range(3)]
    local = np.array(cupycnn.asnumpy(optimizer.flat_grads))
    expected = host_comm.allreduce_sum_(local.copy())

    # Record, at every bucket launch, how many parameter-owning layers had finished backward.
    ctx.bucket_bytes = int(bucket_mb * 2**20)
    owners = [layer for layer in model.layers() if layer.params]
    launches, finished = [], []
    communicator = ctx.communicator
    launch = communicator.iallreduce_sum_

    def recording_launch(array):
        launches.append(len(finished))
        return launch(array)

    communicator.iallreduce_sum_ = recording_launch
    for layer in owners:
        original = layer.backward

        def recording(dy, _original=original):
            dx = _original(dy)
            finished.append(True)
            return dx

        layer.backward = recording
    # The buckets even with one rank (Context.backward skips them there: nothing to add up).
    buckets = ctx.gradient_buckets(optimizer)
    bucketed = []
    for _ in range(3):
        launches.clear(), finished.clear()
        bucketed.append(timed_backward(lambda dy: buckets.backward(model, dy)))
    del communicator.iallreduce_sum_
    for layer in owners:
        del layer.backward

    got = np.array(cupycnn.asnumpy(optimizer.flat_grads))
    if ctx.size == 1:
        match, how = np.array_equal(got, expected), "exactly equal"
    else:
        error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
        match, how = error < 1e-6, f"relative error {error:.2e}"
    stem_ids = {id(layer) for layer in stem}
    stem_buckets = sum(any(id(layer) in stem_ids and b.start <= offset < b.stop
                           for layer, _, offset, _ in buckets.segments) for b in buckets.buckets)
    # Launched while layers were still to run backward: the overlap.
    early = sum(done < len(owners) for done in launches)
    overlap = len(launches) == len(buckets.buckets) and \
        early >= len(buckets.buckets) - stem_buckets
    report(ctx, f"bucketed all-reduce ({model_name})", match and overlap,
           f"{len(buckets.buckets)} buckets of {bucket_mb} MB, {early} launched while backward "
           f"had layers left ({stem_buckets} hold the first layers' gradients); result vs MPI: "
           f"{how}; backward {1e3 * min(plain):.2f} ms plain, {1e3 * min(bucketed):.2f} ms "
           f"with the all-reduce, {ctx.size} rank(s)")


def small_model():
    cupycnn.manual_seed(0)
    return Sequential(Conv2D(3, 8, 3, padding=1, bias=False), BatchNorm2D(8), ReLU(),
                      MaxPool2D(2), Flatten(), Dense(8 * 4 * 4, 10))


def train_small(ctx, device, steps=3, batch=8):
    cupycnn.use(device)
    model = small_model()
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx.broadcast_parameters(model)
    ctx.synchronize_batchnorm(model)
    loss_fn = SoftmaxCrossEntropy()
    rng = np.random.default_rng(1000 + ctx.rank)
    for _ in range(steps):
        x = cupycnn.asarray(rng.standard_normal((batch, 3, 8, 8)).astype(np.float32))
        y = cupycnn.asarray(rng.integers(0, 10, batch).astype(np.int32))
        loss_fn.forward(model.forward(x, training=True), y)
        ctx.backward(model, loss_fn.backward(), optimizer)
        optimizer.step()
    cupycnn.synchronize()
    return model.state_dict()


def check_training(ctx, sim_ctx):
    on_gpu = train_small(ctx, ctx.device)
    on_sim = train_small(sim_ctx, "sim")
    worst = max(np.max(np.abs(on_gpu[k].astype(np.float64) - on_sim[k]))
                / max(np.max(np.abs(on_sim[k].astype(np.float64))), 1e-30)
                for k in on_sim if on_sim[k].dtype.kind == "f")
    cupycnn.use(ctx.device)
    report(ctx, f"training with synchronised batchnorm ({ctx.backend} vs sim + MPI)",
           worst < 1e-4, f"largest relative difference of a tensor {worst:.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "sim"],
                        help="cuda (the check); sim runs the script on CPU ranks (MPI on both "
                             "sides, to test the script itself)")
    parser.add_argument("--model", default="resnet18", choices=["resnet18", "small"],
                        help="the model of check 3 (small: for --device sim)")
    parser.add_argument("--batch", type=int, default=32, help="check 3's batch per rank")
    parser.add_argument("--bucket-mb", type=float, default=1.0,
                        help="bucket size for check 3 (small: many buckets)")
    args = parser.parse_args()
    from mpi4py import MPI
    cupycnn.use(args.device)
    ctx = distributed.init(device=args.device,   # the collectives even for one rank
                           backend="nccl" if args.device == "cuda" else "mpi")
    host_comm = MpiCommunicator(MPI.COMM_WORLD)
    sim_ctx = distributed.Context(MPI.COMM_WORLD, "sim", backend="mpi")
    rng = np.random.default_rng(ctx.rank)
    if ctx.is_root:
        print(f"{ctx.size} rank(s), device {args.device}, backend {ctx.backend}"
              + (f", GPU {ctx.gpu} of rank 0" if ctx.gpu is not None else ""), flush=True)
    with ctx.abort_on_error():
        check_collectives(ctx, host_comm, rng)
        check_statistics(ctx, host_comm, rng)
        check_buckets(ctx, host_comm, args.model, args.batch, args.bucket_mb, rng)
        check_training(ctx, sim_ctx)
    if ctx.is_root:
        print(f"{sum(results)} of {len(results)} checks passed", flush=True)
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
