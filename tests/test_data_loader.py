"""Loader: every example once per epoch, seeded per-epoch order, DistributedSampler sharding,
batch counts, transforms, prefetch equal to no prefetch, errors and threads."""
import gc
import math
import threading

import numpy as np
import pytest

import cupycnn
from cupycnn.data import ArrayDataset, Loader, Subset, train_val_split


def _numbered(rng, n, shape=(3, 5, 2)):
    """A dataset whose label is the example's position, so a batch says which examples it
    holds."""
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return ArrayDataset(images, np.arange(n), classes=[str(k) for k in range(n)])


def _served(loader, numbered=None):
    """Labels of one epoch, batch by batch, checking each batch's images against them (in the
    `_numbered` dataset the loader reads from, its own by default)."""
    numbered = loader.dataset if numbered is None else numbered
    batches = []
    for images, labels in loader:
        np.testing.assert_array_equal(images, numbered.images[labels])
        batches.append(labels.tolist())
    return batches


def _loader_threads():
    return [t for t in threading.enumerate() if t.name == "cupycnn-loader"]


@pytest.fixture(autouse=True)
def on_sim():
    cupycnn.use("sim")


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n, batch_size", [(23, 5), (20, 5), (1, 4), (7, 7)])
def test_an_epoch_serves_every_example_once(rng, shuffle, n, batch_size):
    ds = _numbered(rng, n)
    loader = Loader(ds, batch_size, shuffle=shuffle, seed=int(rng.integers(1 << 30)))
    expected_order = loader.indices()
    batches = _served(loader)
    assert len(batches) == len(loader) == math.ceil(n / batch_size)
    assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    served = sum(batches, [])
    assert sorted(served) == list(range(n))
    assert served == expected_order.tolist()
    if not shuffle:
        assert served == list(range(n))
    images, labels = next(iter(loader))
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8       # sim: NumPy
    assert images.shape == (min(batch_size, n), 3, 5, 2) and labels.dtype == np.int32


def test_the_order_depends_only_on_seed_and_epoch(rng):
    ds = _numbered(rng, 40)
    a = Loader(ds, 6, shuffle=True, seed=5)
    b = Loader(ds, 16, shuffle=True, seed=5, prefetch=False)          # other batching, same order
    a.set_epoch(3)
    b.set_epoch(3)
    order = sum(_served(a), [])
    assert sum(_served(b), []) == order
    assert order == np.random.default_rng([5, 3]).permutation(40).tolist()   # as documented
    a.set_epoch(4)
    assert sum(_served(a), []) != order
    assert Loader(ds, 6, shuffle=True, seed=6).indices(3).tolist() != order
    # Without set_epoch every pass is the next epoch; set_epoch goes back to any epoch.
    fresh = Loader(ds, 8, shuffle=True, seed=5)
    first, second = sum(_served(fresh), []), sum(_served(fresh), [])
    assert first == fresh.indices(0).tolist() and second == fresh.indices(1).tolist()
    assert first != second and fresh.epoch == 2
    fresh.set_epoch(3)
    assert sum(_served(fresh), []) == order


def _distributed_sampler(order, num_replicas, rank):
    """torch.utils.data.DistributedSampler.__iter__ (drop_last=False) on a given order."""
    indices = list(order)
    num_samples = math.ceil(len(indices) / num_replicas)
    total_size = num_samples * num_replicas
    padding_size = total_size - len(indices)
    if padding_size <= len(indices):
        indices += indices[:padding_size]
    else:
        indices += (indices * math.ceil(padding_size / len(indices)))[:padding_size]
    return indices[rank:total_size:num_replicas]


@pytest.mark.parametrize("n, world_size", [(10, 1), (10, 2), (10, 3), (11, 4), (12, 4), (3, 5),
                                           (1, 3)])
def test_sharding_follows_distributed_sampler(rng, n, world_size):
    ds = _numbered(rng, n)
    seed, epoch = int(rng.integers(1 << 30)), int(rng.integers(100))
    whole = Loader(ds, 4, shuffle=True, seed=seed)
    order = whole.indices(epoch).tolist()                  # the one permutation of the epoch
    shards = []
    for rank in range(world_size):
        loader = Loader(ds, 4, shuffle=True, seed=seed, rank=rank, world_size=world_size)
        loader.set_epoch(epoch)
        served = sum(_served(loader), [])
        assert served == _distributed_sampler(order, world_size, rank)
        assert len(served) == loader.num_samples == math.ceil(n / world_size)
        assert len(loader) == math.ceil(loader.num_samples / 4)
        shards.append(served)
    assert len({len(s) for s in shards}) == 1                        # equal lengths
    everything = sum(shards, [])
    assert sorted(set(everything)) == list(range(n))                 # the ranks cover all
    padding = len(everything) - n
    assert padding == math.ceil(n / world_size) * world_size - n
    # Only the padding repeats, and it repeats the epoch's order from its start.
    assert np.bincount(everything, minlength=n).sum() - n == padding
    interleaved = [shards[r][i] for i in range(len(shards[0])) for r in range(world_size)]
    assert interleaved == (order * (1 + padding // max(n, 1) + 1))[:len(interleaved)]


def test_drop_last_and_len(rng):
    ds = _numbered(rng, 23)
    loader = Loader(ds, 5, drop_last=True)
    batches = _served(loader)
    assert len(loader) == len(batches) == 4 and all(len(b) == 5 for b in batches)
    assert len(Loader(ds, 5)) == 5
    assert len(Loader(ds, 5, drop_last=True, world_size=2, rank=1)) == 2   # 12 each
    assert len(Loader(ds, 30, drop_last=True)) == 0
    assert _served(Loader(ds, 30, drop_last=True)) == []


class _ToFloat:
    """A transform: uint8 [B, H, W, C] -> float32 [B, C, H, W] / 255, counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        assert isinstance(images, np.ndarray) and images.dtype == np.uint8
        self.calls += 1
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255


def test_transform_is_applied_to_every_batch(rng):
    ds = _numbered(rng, 17)
    transform = _ToFloat()
    loader = Loader(ds, 4, transform=transform)
    batches = list(loader)
    assert transform.calls == len(batches) == 5
    for x, labels in batches:
        assert x.dtype == np.float32 and x.shape[1:] == (2, 3, 5)
        np.testing.assert_array_equal(x, ds.images[labels].transpose(0, 3, 1, 2) / np.float32(255))
    with pytest.raises(ValueError, match="Loader: transform must be callable, got int"):
        Loader(ds, 4, transform=3)


@pytest.mark.parametrize("world_size", [1, 3])
def test_prefetch_serves_the_same_batches(rng, world_size):
    ds = _numbered(rng, 31)
    for rank in range(world_size):
        kwargs = dict(batch_size=4, shuffle=True, seed=9, rank=rank, world_size=world_size,
                      transform=_ToFloat())
        ahead, plain = Loader(ds, prefetch=True, **kwargs), Loader(ds, prefetch=False, **kwargs)
        for epoch in (0, 1):
            ahead.set_epoch(epoch)
            plain.set_epoch(epoch)
            got, want = list(ahead), list(plain)
            assert len(got) == len(want) == len(ahead)
            for (x1, y1), (x2, y2) in zip(got, want):
                np.testing.assert_array_equal(x1, x2)
                np.testing.assert_array_equal(y1, y2)
    assert _loader_threads() == []


def test_views_are_served_from_their_parent(rng):
    ds = _numbered(rng, 30)
    train, val = train_val_split(ds, 0.2, seed=1, stratified=False)
    served = sum(_served(Loader(val, 4, shuffle=False), ds), [])
    assert served == val.indices.tolist()
    inner = Subset(train, [3, 0, 7])
    assert sum(_served(Loader(inner, 2, shuffle=False), ds), []) == \
        train.indices[[3, 0, 7]].tolist()


class _ItemsOnly:
    """A dataset with nothing but len() and [i] (no storage()); [fail_at] raises."""

    def __init__(self, images, fail_at=None):
        self.images, self.fail_at = images, fail_at

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise KeyError(f"example {i} is missing")
        return self.images[i], i * 10


@pytest.mark.parametrize("prefetch", [True, False])
def test_datasets_without_storage_and_their_errors(rng, prefetch):
    images = rng.integers(0, 256, (9, 4, 4), dtype=np.uint8)        # HW images: one channel
    loader = Loader(_ItemsOnly(images), 4, shuffle=False, prefetch=prefetch)
    assert not loader.resident
    batches = list(loader)
    assert [b[1].tolist() for b in batches] == [[0, 10, 20, 30], [40, 50, 60, 70], [80]]
    np.testing.assert_array_equal(batches[1][0][..., 0], images[4:8])
    failing = Loader(_ItemsOnly(images, fail_at=5), 4, shuffle=False, prefetch=prefetch)
    iterator = iter(failing)
    next(iterator)
    with pytest.raises(KeyError, match="example 5 is missing"):     # raised where it iterates
        next(iterator)
    with pytest.raises(StopIteration):
        next(iterator)
    assert _loader_threads() == []


def test_leaving_an_epoch_early_stops_the_thread(rng):
    loader = Loader(_numbered(rng, 50), 3)
    for k, _ in enumerate(loader):
        assert len(_loader_threads()) == 1
        if k == 2:
            break
    gc.collect()
    assert _loader_threads() == []
    iterator = iter(loader)
    next(iterator)
    iterator.close()
    assert _loader_threads() == [] and len(iterator) == 0
    assert list(iterator) == []


def test_bad_arguments_name_the_loader(rng):
    ds = _numbered(rng, 5)
    cases = [(dict(batch_size=0), "batch_size must be an integer of at least 1, got 0"),
             (dict(batch_size=2.5), "batch_size must be an integer of at least 1, got 2.5"),
             (dict(world_size=0), "world_size must be an integer of at least 1"),
             (dict(rank=2, world_size=2), r"rank must lie in \[0, world_size=2\), got 2"),
             (dict(seed=-1), "seed must be an integer of at least 0"),
             (dict(device_resident="yes"), "device_resident must be True, False or 'auto'")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match="Loader: " + message):
            Loader(ds, **{"batch_size": 2, **kwargs})
    with pytest.raises(ValueError, match="Loader: the dataset is empty"):
        Loader(ArrayDataset(np.zeros((0, 2, 2, 1), np.uint8), []), 2)
    with pytest.raises(ValueError, match="Loader: epoch must be an integer of at least 0"):
        Loader(ds, 2).set_epoch(-1)


@pytest.mark.parametrize("resident", [True, False])
def test_on_cuda_batches_are_cupy_arrays_equal_to_the_host_ones(rng, resident, cuda_device):
    import cupy
    ds = _numbered(rng, 37)
    for prefetch in (True, False):
        loader = Loader(ds, 8, shuffle=True, seed=2, prefetch=prefetch,
                        device_resident=resident)
        assert loader.resident == resident
        served = []
        for images, labels in loader:
            assert isinstance(images, cupy.ndarray) and images.dtype == np.uint8
            assert isinstance(labels, cupy.ndarray) and labels.dtype == np.int32
            host_labels = labels.get()
            np.testing.assert_array_equal(images.get(), ds.images[host_labels])
            served += host_labels.tolist()
        assert served == loader.indices(0).tolist()


# The cuda paths without a GPU (device residency, pinned uploads, prefetch streams) are checked on
# their data under tests/fake_cupy.py's stream-ordered model: tests/test_stream_order.py.


def test_unpadded_shards_are_exact_for_evaluation():
    from cupycnn.data import ArrayDataset, Loader
    cupycnn.use("numpy")
    n = 10
    ds = ArrayDataset(np.arange(n * 2, dtype=np.uint8).reshape(n, 1, 2, 1), np.arange(n))
    seen = []
    for rank in range(4):
        loader = Loader(ds, batch_size=2, shuffle=False, rank=rank, world_size=4, pad=False,
                        prefetch=False)
        labels = [int(v) for _, y in loader for v in y]
        assert len(labels) == loader.num_samples == len(range(rank, n, 4))
        seen += labels
    assert sorted(seen) == list(range(n))               # every example once, none repeated


def test_state_dict_restores_epoch_and_transform_counter():
    from cupycnn.data import ArrayDataset, Loader, RandomCropFlip
    cupycnn.use("numpy")
    ds = ArrayDataset(np.random.default_rng(0).integers(0, 255, (8, 6, 6, 3), dtype=np.uint8),
                      np.arange(8) % 2)
    a = Loader(ds, batch_size=4, transform=RandomCropFlip(padding=2, seed=5), shuffle=True,
               seed=1)
    for _ in a:
        pass
    state = a.state_dict()
    expected = [x.copy() for x, _ in a]
    b = Loader(ds, batch_size=4, transform=RandomCropFlip(padding=2, seed=5), shuffle=True,
               seed=1)
    b.load_state_dict(state)
    got = [x for x, _ in b]
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)
