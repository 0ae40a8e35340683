"""Run under mpiexec by tests/test_distributed.py: collectives, broadcast, consistency, abort."""
import sys

import numpy as np

import cupycnn
from cupycnn import distributed
from cupycnn.layers import Dense

mode = sys.argv[1]
cupycnn.use(sys.argv[2] if len(sys.argv) > 2 else "numpy")
ctx = distributed.init()

if mode == "collectives":
    a = np.full(5, ctx.rank + 1.0)
    ctx.allreduce_sum_(a)
    assert (a == sum(range(1, ctx.size + 1))).all(), a
    b = np.arange(4.0) * (ctx.rank + 1)
    ctx.broadcast_(b, root=ctx.size - 1)
    assert (b == np.arange(4.0) * ctx.size).all(), b
    handle = ctx.communicator.iallreduce_sum_(a)
    handle.wait()
    assert (a == ctx.size * sum(range(1, ctx.size + 1))).all()
    print(f"rank {ctx.rank}/{ctx.size} local {ctx.local_rank}/{ctx.local_size} OK", flush=True)

elif mode == "broadcast_parameters":
    cupycnn.manual_seed(100 + ctx.rank)          # every rank initialises differently
    model = Dense(4, 3)
    ctx.broadcast_parameters(model)
    weights = ctx.allgather(cupycnn.asnumpy(model.params["weight"]).tolist())
    assert all(w == weights[0] for w in weights)
    cupycnn.manual_seed(100)
    np.testing.assert_array_equal(Dense(4, 3).params["weight"], model.params["weight"])
    print(f"rank {ctx.rank} OK", flush=True)

elif mode == "mismatch":
    model = Dense(4, 3 if ctx.rank == 0 else 5)

    class Opt:
        param_groups = [{"lr": 0.1}]

    try:
        ctx.check_consistency(model, Opt(), global_batch=64 if ctx.rank == 0 else 32)
    except distributed.ConsistencyError as e:
        print(f"rank {ctx.rank} refused: {e}", flush=True)

elif mode == "abort":
    with ctx.abort_on_error():
        if ctx.rank == 1:
            raise RuntimeError("simulated failure on one rank")
        a = np.ones(3)
        ctx.allreduce_sum_(a)         # rank 0 would wait here forever without the abort
        print("rank 0 finished: the abort did not happen", flush=True)

elif mode == "streams":
    from cupycnn.data import RandomCropFlip
    from cupycnn.layers import Dropout
    cupycnn.manual_seed(5)                       # the same seed on every rank
    layer = Dropout(0.5)
    transform = RandomCropFlip(padding=2, seed=9)
    x = np.ones((64, 64), np.float32)
    mask = cupycnn.asnumpy(layer.forward(cupycnn.asarray(x))) != 0
    images = np.arange(2 * 6 * 6 * 3, dtype=np.uint8).reshape(2, 6, 6, 3)
    augmented = cupycnn.asnumpy(transform(cupycnn.asarray(images)))
    masks = ctx.allgather(mask)
    states = ctx.allgather((layer.random_state(), transform.random_state()))
    views = ctx.allgather(augmented)
    assert all(s == states[0] for s in states), states          # what checkpoints save: equal
    assert not any(np.array_equal(masks[0], m) for m in masks[1:])   # what is drawn: per rank
    assert not any(np.array_equal(views[0], v) for v in views[1:])
    print(f"rank {ctx.rank} OK", flush=True)
