"""HDF5 checkpoints: round trip, atomic saves, clear errors for bad or mismatched files."""
import h5py
import numpy as np
import pytest

import cupycnn
from cupycnn import checkpoint
from cupycnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cupycnn.layers import Dense

from hostile_files import reseal


class FakeOptimizer:
    def __init__(self):
        self.state = {"state": {0: {"momentum_buffer": np.arange(3.0), "step": 7}},
                      "param_groups": [{"lr": 0.1, "weight_decay": 5e-4, "params": [0, 1]}]}

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        if state["param_groups"][0]["params"] != [0, 1]:
            raise ValueError("group layout differs")
        self.state = state


@pytest.fixture(autouse=True)
def numpy_device():
    cupycnn.use("numpy")


def _save(path, model, **kw):
    args = dict(model=model, optimizer=FakeOptimizer(), epoch=2, step=30,
                config={"name": "dense", "in_features": 3}, classes=["cat", "dog"],
                normalization={"mean": [0.5], "std": [0.25]}, rng={"library": {"x": 1}},
                trainer={"history": {"loss": [1.0, 0.5]}})
    args.update(kw)
    return save_checkpoint(path, **args)


def test_round_trip(tmp_path):
    model = Dense(3, 2)
    _save(tmp_path / "c.h5", model)
    c = load_checkpoint(tmp_path / "c.h5")
    assert (c.epoch, c.step, c.classes) == (2, 30, ["cat", "dog"])
    assert c.config == {"name": "dense", "in_features": 3}
    assert c.normalization == {"mean": [0.5], "std": [0.25]}
    assert c.trainer == {"history": {"loss": [1.0, 0.5]}}
    assert list(c.model_state) == ["weight", "bias"]
    np.testing.assert_array_equal(c.model_state["weight"], model.params["weight"])
    assert c.optimizer_state["state"][0]["step"] == 7           # int keys survive
    np.testing.assert_array_equal(c.optimizer_state["state"][0]["momentum_buffer"], np.arange(3.0))
    other, opt = Dense(3, 2), FakeOptimizer()
    c.restore(other, opt)
    np.testing.assert_array_equal(other.params["bias"], model.params["bias"])


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.h5"
    model = Dense(3, 2)
    _save(path, model, epoch=1)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(h5py.Group, "create_dataset", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(path, Dense(3, 2), epoch=2)
    assert load_checkpoint(path).epoch == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.h5"]     # no partial file left


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing.h5")
    good = _save(tmp_path / "good.h5", Dense(3, 2))
    data = good.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt|damaged"):
        load_checkpoint(tmp_path / "cut.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.ones(3)
    with pytest.raises(CheckpointError, match="HDF5 file but not a cupycnn checkpoint"):
        load_checkpoint(tmp_path / "other.h5")
    reseal(good, version=99)
    with pytest.raises(CheckpointError, match="newer cupycnn"):
        load_checkpoint(good)


def test_mismatched_model_names_the_difference(tmp_path):
    _save(tmp_path / "c.h5", Dense(3, 2))
    c = load_checkpoint(tmp_path / "c.h5")
    with pytest.raises(CheckpointError, match=r"does not match the model \(name=dense, "
                                              r"in_features=3\).*weight: shape \(2, 3\) in the "
                                              r"state, \(5, 3\) in the model"):
        c.restore(Dense(3, 5))
    opt = FakeOptimizer()
    c.optimizer_state["param_groups"][0]["params"] = [0]
    with pytest.raises(CheckpointError, match="optimizer state does not match: group layout"):
        c.restore(Dense(3, 2), opt)


def test_values_of_every_kind_round_trip(tmp_path):
    """What trainers and callbacks store: NaN and infinite figures, int and str keys, nested
    lists holding arrays, booleans, None, 128-bit generator states, 0-d and empty arrays."""
    tree = {"history": {"loss": [1.5, float("nan"), float("inf")], "lr": [0.1, 0.01]},
            "keys": {0: "int key", "0": "str key", 7: [np.arange(3), {"deep": np.ones((0, 2))}]},
            "flags": [True, None, "x"], "big": 2 ** 127 + 5, "scalar": np.array(3.5),
            "bools": np.array([True, False])}
    _save(tmp_path / "c.h5", Dense(3, 2), trainer=tree, optimizer=None)
    back = load_checkpoint(tmp_path / "c.h5").trainer
    assert back["history"]["lr"] == [0.1, 0.01]
    loss = back["history"]["loss"]
    assert loss[0] == 1.5 and np.isnan(loss[1]) and loss[2] == float("inf")
    assert back["keys"][0] == "int key" and back["keys"]["0"] == "str key"
    np.testing.assert_array_equal(back["keys"][7][0], np.arange(3))
    assert back["keys"][7][1]["deep"].shape == (0, 2)
    assert back["flags"] == [True, None, "x"] and back["big"] == 2 ** 127 + 5
    assert back["scalar"].shape == () and back["scalar"] == 3.5
    assert back["bools"].dtype == np.bool_


def test_what_cannot_be_stored_is_refused_at_save(tmp_path):
    with pytest.raises(CheckpointError, match="cannot store it in a checkpoint: trainer.x holds a object"):
        _save(tmp_path / "c.h5", Dense(3, 2), trainer={"x": object()})
    with pytest.raises(CheckpointError, match="config.lr holds the number nan"):
        _save(tmp_path / "c.h5", Dense(3, 2), config={"lr": float("nan")})
    assert not (tmp_path / "c.h5").exists()
