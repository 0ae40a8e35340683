"""Evaluation and prediction in dataset order whatever the loader does, and loaders in dataset
order unless shuffling is asked (PyTorch's DataLoader default)."""
import numpy as np

import cupycnn
from cupycnn.data import Loader, Normalize, Synthetic
from cupycnn.layers import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential
from cupycnn.optim import Adam
from cupycnn.train import Trainer

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def net():
    return Sequential(Conv2D(3, 6, 3, padding=1), BatchNorm2D(6), ReLU(), MaxPool2D(2),
                      Flatten(), Dense(6 * 4 * 4, 4))


def trained(seed=0):
    cupycnn.use("numpy")
    cupycnn.manual_seed(seed)
    model = net()
    trainer = Trainer(model, Adam(model.parameters(), lr=1e-2), progress=False)
    train = Synthetic(96, shape=(8, 8, 3), num_classes=4, seed=1)
    trainer.fit(Loader(train, 16, shuffle=True, transform=Normalize(MEAN, STD)), epochs=4)
    return trainer


def test_loaders_keep_dataset_order_unless_asked_to_shuffle():
    data = Synthetic(10, shape=(4, 4, 1), num_classes=2, seed=0)
    plain = Loader(data, 4)
    assert plain.shuffle is False
    assert plain.indices(0).tolist() == plain.indices(5).tolist() == list(range(10))
    assert Loader(data, 4, shuffle=True).indices(0).tolist() != list(range(10))


def test_predict_and_evaluate_follow_the_dataset_not_the_loader():
    """The trap: a shuffled loader's predictions compared with the dataset's labels scored
    chance while evaluate said the model was good. Now both read the dataset in order, every
    example once, and agree exactly."""
    trainer = trained()
    test = Synthetic(45, shape=(8, 8, 3), num_classes=4, seed=2)
    shuffled = Loader(test, 8, shuffle=True, drop_last=True, seed=3,
                      transform=Normalize(MEAN, STD))
    result = trainer.evaluate(shuffled)
    probs = trainer.predict(shuffled)
    assert result["count"] == len(test) == len(probs)          # the short last batch counts
    accuracy = float(np.mean(np.argmax(probs, 1) == test.labels))
    assert result["accuracy"] >= 0.9
    assert accuracy == result["accuracy"]
    in_order = trainer.predict(Loader(test, 5, transform=Normalize(MEAN, STD)))
    np.testing.assert_array_equal(probs, in_order)
    assert shuffled.epoch == 0                # evaluating left the loader's epochs alone


def test_evaluate_and_predict_run_in_eval_mode_and_restore_the_modes():
    trainer = trained()
    model = trainer.model
    test = Synthetic(16, shape=(8, 8, 3), num_classes=4, seed=2)
    loader = Loader(test, 8, transform=Normalize(MEAN, STD))
    stats = {k: v.copy() for k, v in model.state_dict().items()}
    model.train()
    model[1].eval()                           # a mixed state the user chose
    modes = [layer.training for layer in model.layers()]
    trainer.evaluate(loader)
    trainer.predict(loader)
    assert [layer.training for layer in model.layers()] == modes
    for k, v in model.state_dict().items():   # no running statistic moved
        np.testing.assert_array_equal(v, stats[k], err_msg=k)
    # fit trains in training mode (the statistics move) and gives the modes back.
    model.eval()
    trainer.fit(loader, epochs=trainer.epoch + 1)
    assert not any(layer.training for layer in model.layers())
    assert not np.array_equal(model.state_dict()["1.running_mean"], stats["1.running_mean"])


def _numbered_shards(folder, n=30, shard_size=4):
    """n 8 x 8 RGB images in tar shards, in file order; sample k's first pixel spells k."""
    import io

    from PIL import Image

    from cupycnn.data import write_shards
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)

    def png(image):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        return buffer.getvalue()
    write_shards(((f"{k:04d}", png(images[k]), "png", k % 4) for k in range(n)), folder,
                 classes=list("abcd"), shard_size=shard_size)
    return images


def test_predict_on_shards_with_workers_follows_the_files(tmp_path):
    """Tar shards read by two workers come interleaved batch by batch (and shuffled, with
    shuffle=True); predict still gives row k for the files' k-th sample, and a loader that
    is in order already is used as it is (its workers kept), not rebuilt without them."""
    from cupycnn.data import Decode, TarShards
    trainer = trained()
    images = _numbered_shards(tmp_path / "shards")
    expected = trainer.predict(images)
    shards = TarShards(tmp_path / "shards", Decode())
    for shuffle in (False, True):
        loader = Loader(shards, 3, shuffle=shuffle, num_workers=2, pad=False,
                        transform=Normalize(MEAN, STD))
        served = np.concatenate([x for x, _ in loader.in_order()])
        assert (loader.in_order() is loader) == (not shuffle)
        assert loader.in_order()._host.num_workers == 2
        np.testing.assert_allclose(trainer.predict(loader), expected, rtol=1e-6, atol=1e-9)
        loader.close()
    first_pixels = np.rint((served[:, 0, 0, 0] * STD[0] + MEAN[0]) * 255)
    assert first_pixels[:6].tolist() == [0, 1, 2, 4, 5, 6]        # worker 0's, then 1's batch


class _Ranks:
    """A data-parallel context for ranks run as threads: allgather meets at a barrier."""

    def __init__(self, size):
        import threading
        self.size, self.barrier, self.slots = size, threading.Barrier(size), [None] * size

    def rank(self, r):
        outer = self

        class Context:
            rank, size = r, outer.size

            def allgather(self, obj):
                outer.slots[r] = obj
                outer.barrier.wait()
                gathered = list(outer.slots)
                outer.barrier.wait()
                return gathered
        return Context()


def test_predict_gathers_every_ranks_shards_into_file_order(tmp_path):
    import threading

    from cupycnn.data import Decode, TarShards
    trainer = trained()
    images = _numbered_shards(tmp_path / "shards", n=30, shard_size=4)      # 8 shards
    expected = trainer.predict(images)
    state = trainer.model.state_dict()
    ranks, results = _Ranks(3), {}

    def run(r):
        model = net()                           # every rank its own copy of the same weights
        model.load_state_dict(state)
        mine = Trainer(model, None, progress=False, distributed=ranks.rank(r))
        loader = Loader(TarShards(tmp_path / "shards", Decode()), 4, rank=r, world_size=3,
                        pad=False, transform=Normalize(MEAN, STD))
        results[r] = mine.predict(loader)
    threads = [threading.Thread(target=run, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in range(3):
        np.testing.assert_allclose(results[r], expected, rtol=1e-6, atol=1e-9)
