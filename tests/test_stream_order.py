"""The cuda code paths under tests/fake_cupy.py's stream-ordered model of CuPy: queued work run
in adversarial, seeded orders, CuPy's per-stream pool arenas, pinned copies that read the host
when they run. Each test checks data, never a call log.

The model itself first (each rule it must get right for the rest to mean anything), then the
loader: every prefetched and transformed batch, device-resident and pinned, must hold the pixels
of the examples its labels name, under every schedule the seeds draw.

To see the loader test catch the bug the loader had (issue 9, item 1), run it against that
loader:
    git show ca56475:cupycnn/data/loader.py > /tmp/old_loader.py
    LOADER_UNDER_TEST=/tmp/old_loader.py .venv/bin/python -m pytest -q tests/test_stream_order.py -k loader_batches
"""
import importlib.util
import os

import numpy as np
import pytest

import cupycnn
import fake_cupy
from cupycnn.data import ArrayDataset, Normalize
from cupycnn.reference import augment as reference_augment

SEEDS = range(24)
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


@pytest.fixture
def gpu(monkeypatch):
    """make(seed) -> the fake cupy module of a fresh fake GPU, installed as `cupy`."""
    def make(seed, **kwargs):
        cupy, cupyx = fake_cupy.make(seed, **kwargs)
        return fake_cupy.install(monkeypatch, cupy, cupyx)
    yield make
    cupycnn.use("numpy")


# ----------------------------------------------------------------------------- the model

def test_nothing_runs_until_the_host_synchronises_on_a_lazy_schedule(gpu):
    lazy = next(s for s in range(100) if fake_cupy.make(s)[0]._world.scheduler.burst == 0.0)
    cupy = gpu(lazy)
    a = cupy.asarray(np.arange(6, dtype=np.float32))
    b = a * 2
    assert [e for e in cupy.log if e[0] == "kernel"] == []
    np.testing.assert_array_equal(b.get(), np.arange(6) * 2)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        np.asarray(b)


def test_freed_memory_returns_to_the_arena_of_its_stream_and_is_reused_there_at_once(gpu):
    cupy = gpu(0)
    side = cupy.cuda.Stream(non_blocking=True)
    with side:
        a = cupy.empty(1000, np.float32)
    address = a.data.ptr
    del a                                        # back to side's arena, no event
    b = cupy.empty(1000, np.float32)             # the null stream's arena: a new block
    assert b.data.ptr != address
    with side:
        c = cupy.empty(900, np.float32)          # best fit in side's arena: the freed block
    assert c.data.ptr == address
    pool = cupy.get_default_memory_pool()
    assert pool.used_bytes() == 2 * 4096         # 4000 and 3600 bytes, rounded up to 512 bytes


def test_a_split_block_keeps_its_rest_free_and_merges_back(gpu):
    cupy = gpu(0)
    a = cupy.empty(4096, np.uint8)
    base = a.data.ptr
    del a
    b, c = cupy.empty(1024, np.uint8), cupy.empty(1024, np.uint8)
    assert {b.data.ptr, c.data.ptr} == {base, base + 1024}
    del b, c
    d = cupy.empty(4096, np.uint8)               # merged again into one block
    assert d.data.ptr == base


def test_reading_without_waiting_for_the_writing_stream_sees_stale_data(gpu):
    """A missing wait_event is wrong data under some schedule, right data with the wait."""
    stale = 0
    for seed in SEEDS:
        cupy = gpu(seed)
        a = cupy.zeros(8, np.float32)
        cupy.cuda.Device().synchronize()
        side = cupy.cuda.Stream(non_blocking=True)
        with side:
            a.fill(7)
        stale += not np.all(a.get() == 7)        # get() synchronises the null stream only
        with side:
            a.fill(9)
        cupy.cuda.get_current_stream().wait_event(side.record())
        np.testing.assert_array_equal(a.get(), 9)
    assert stale > 0


def test_a_pinned_copy_reads_the_host_when_it_runs_a_pageable_one_when_called(gpu):
    changed = 0
    for seed in SEEDS:
        cupy = gpu(seed)
        import cupyx
        side = cupy.cuda.Stream(non_blocking=True)
        pinned = cupyx.empty_pinned((4,), np.float32)
        pageable = np.empty(4, np.float32)
        pinned[...] = pageable[...] = 1
        x, y = cupy.empty(4, np.float32), cupy.empty(4, np.float32)
        cupy.cuda.Device().synchronize()
        x.set(pinned, stream=side)
        y.set(pageable, stream=side)
        pinned[...] = pageable[...] = 2           # before the copies may have run
        side.synchronize()
        np.testing.assert_array_equal(y.get(), 1)
        changed += float(x[0]) == 2
    assert changed > 0


def test_the_legacy_null_stream_orders_blocking_streams_but_not_non_blocking_ones(gpu):
    raced = 0
    for seed in SEEDS:
        cupy = gpu(seed)
        blocking, free = cupy.cuda.Stream(), cupy.cuda.Stream(non_blocking=True)
        a, b = cupy.zeros(4, np.float32), cupy.zeros(4, np.float32)
        cupy.cuda.Device().synchronize()
        with blocking:
            a.fill(3)
        with free:
            b.fill(3)
        raced += not np.all(b.get() == 3)
        np.testing.assert_array_equal(a.get(), 3)  # the null stream's copy waits for `blocking`
    assert raced > 0


def test_kernels_run_the_emulator_on_device_bytes_in_stream_order(gpu):
    cupy = gpu(3)
    module = cupy.RawModule(code='extern "C" __global__ void twice(const float* x, float* y, '
                                 'int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; '
                                 'if (i < n) y[i] = 2 * x[i]; }')
    kernel = module.get_function("twice")
    x = cupy.asarray(np.arange(100, dtype=np.float32))
    y = cupy.empty(100, np.float32)
    kernel((4,), (32,), (x, y, np.int32(100)))
    np.testing.assert_array_equal(y.get(), 2 * np.arange(100))
    with pytest.raises(TypeError, match="Python int"):
        kernel((4,), (32,), (x, y, 100))          # CuPy would pass 64 bits for an int
    with pytest.raises(TypeError, match="Only numpy.ndarrays of size one"):
        kernel((4,), (32,), (np.zeros(100, np.float32), y, np.int32(100)))


def test_devices_synchronize_waits_for_every_stream(gpu):
    """cupycnn.synchronize() is a device synchronisation: work on a side stream (the loader's,
    NCCL's) has finished after it too, so a host read of pinned memory sees it."""
    for seed in SEEDS:
        cupy = gpu(seed)
        import cupyx
        side = cupy.cuda.Stream(non_blocking=True)
        a = cupy.asarray(np.full(4, 5, np.float32))
        host = cupyx.empty_pinned((4,), np.float32)
        host[...] = 0
        side.wait_event(cupy.cuda.get_current_stream().record())
        with side:
            a.get(out=host, blocking=False)
        cupycnn.synchronize()
        np.testing.assert_array_equal(host, 5)


# ---------------------------------------------------------------------------- the loader

def _loader_module():
    """cupycnn.data.loader, or the file LOADER_UNDER_TEST names (an older loader, to show
    these tests catch its bug)."""
    path = os.environ.get("LOADER_UNDER_TEST")
    if not path:
        from cupycnn.data import loader
        return loader
    spec = importlib.util.spec_from_file_location("cupycnn.data._loader_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _numbered(n, shape=(6, 5, 3), seed=0):
    images = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    return ArrayDataset(images, np.arange(n), classes=[str(k) for k in range(n)])


def _wrong_batches(monkeypatch, loader_module, ds, resident, seed, transform=True):
    """Run one epoch with nothing synchronised in the loop (as a training loop: the host queues
    work and moves on), keep every batch, then read them all back; return a line per batch
    whose images are not the examples its labels name."""
    monkeypatch.setattr(loader_module, "_device_copies", {})
    loader = loader_module.Loader(ds, 8, seed=seed, prefetch=True, device_resident=resident,
                                  transform=Normalize(MEAN, STD) if transform else None)
    assert loader.resident == resident
    kept = list(loader)
    wrong = []
    served = []
    for k, (x, y) in enumerate(kept):
        labels = y.get()
        served += labels.tolist()
        expected = ds.images[labels]
        if transform:
            expected = reference_augment.normalize(expected, np.array(MEAN), np.array(STD))
            bad = ~np.isclose(x.get(), expected, rtol=1e-5, atol=1e-5).all(axis=(1, 2, 3))
        else:
            bad = ~(x.get() == expected).all(axis=(1, 2, 3))
        if bad.any():
            wrong.append(f"seed {seed}, batch {k}: {int(bad.sum())} of {len(labels)} images "
                         f"are not the examples their labels name ({labels[bad].tolist()})")
    assert served == loader.indices(0).tolist(), f"seed {seed}: labels out of order"
    return wrong


@pytest.mark.parametrize("resident", [True, False], ids=["device-resident", "pinned"])
def test_loader_batches_are_right_under_every_schedule(gpu, monkeypatch, resident):
    loader_module = _loader_module()
    ds = _numbered(40)
    wrong = []
    for seed in SEEDS:
        gpu(seed)
        wrong += _wrong_batches(monkeypatch, loader_module, ds, resident, seed)
    assert not wrong, f"{len(wrong)} corrupted batches:\n" + "\n".join(wrong)


def test_loader_without_transform_and_split_datasets_sharing_a_device_copy(gpu, monkeypatch):
    from cupycnn.data import loader as loader_module
    from cupycnn.data import train_val_split
    train, val = train_val_split(_numbered(37), 0.3, seed=0)
    for seed in SEEDS[:6]:
        cupy = gpu(seed)
        for part in (train, val):
            loader = loader_module.Loader(part, 8, seed=2, prefetch=True, device_resident=True)
            kept = list(loader)
            for x, y in kept:
                np.testing.assert_array_equal(x.get(), part.dataset.images[y.get()])
        uploads = [e for e in cupy.log if e[0] == "copy_up" and e[2] == "pageable"]
        assert len([e for e in uploads]) >= 1


def test_allocating_batches_on_the_prefetch_stream_is_caught(gpu, monkeypatch):
    """The fix undone (a batch allocated from the prefetch stream's arena, as before): the model
    finds corrupted batches."""
    from cupycnn.data import loader as loader_module

    def on_the_prefetch_stream(consumer, stream, *specs):
        import cupy
        with stream:
            return [cupy.empty(shape, dtype) for shape, dtype in specs]
    monkeypatch.setattr(loader_module, "_allocate_for", on_the_prefetch_stream)
    ds = _numbered(40)
    wrong = []
    for seed in SEEDS:
        gpu(seed)
        wrong += _wrong_batches(monkeypatch, loader_module, ds, True, seed)
    assert wrong, "the model did not catch batches allocated on the prefetch stream"


@pytest.mark.parametrize("resident", [True, False], ids=["device-resident", "pinned"])
def test_a_batch_made_ahead_but_never_taken_cannot_overwrite_later_arrays(gpu, resident):
    """Leave an epoch after one batch (the next one is already being made on the prefetch
    stream), then allocate on the loop's stream what the dropped batch held and write it: the
    prefetch stream's queued writes must not land there. (Found by the cuda variant of
    test_trainer_graphed.py on the fake GPU: a labels batch written over Adam's segment table.)"""
    loader_module = _loader_module()
    ds = _numbered(40)
    wrong = []
    for seed in SEEDS:
        cupy = gpu(seed)
        loader = loader_module.Loader(ds, 8, seed=seed, prefetch=True, device_resident=resident)
        it = iter(loader)
        next(it)
        del it                                   # closes the iterator: batch 1 is dropped
        images = cupy.full((8, *ds.images.shape[1:]), 7, dtype=np.uint8)
        labels = cupy.full((8,), -7, dtype=np.int32)
        cupycnn.synchronize()
        if not ((images.get() == 7).all() and (labels.get() == -7).all()):
            wrong.append(seed)
    assert not wrong, f"seeds {wrong}: a dropped batch's queued writes landed in later arrays"


def test_cuda_auto_residency_follows_free_memory(gpu):
    from cupycnn.data import Loader
    cupy = gpu(0)
    ds = _numbered(10)
    assert Loader(ds, 4).resident
    cupy.cuda.runtime.free[0] = 2 * ds.images.nbytes     # needs more than half of what is free
    assert not Loader(ds, 4).resident
    assert Loader(ds, 4, device_resident=True).resident


@pytest.mark.parametrize("resident", [True, False], ids=["device-resident", "pinned"])
def test_loader_without_prefetch_on_cuda(gpu, resident):
    from cupycnn.data import Loader
    ds = _numbered(21)
    for seed in SEEDS[:4]:
        gpu(seed)
        loader = Loader(ds, 8, seed=1, prefetch=False, device_resident=resident,
                        transform=Normalize(MEAN, STD))
        kept = list(loader)
        for x, y in kept:
            expected = reference_augment.normalize(ds.images[y.get()], np.array(MEAN),
                                                   np.array(STD))
            np.testing.assert_allclose(x.get(), expected, rtol=1e-5, atol=1e-5)
