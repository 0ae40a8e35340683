"""Precision as a user's choice (cupycnn.set_precision): the setting, the operand rounding of the
reference, the three devices agreeing at each precision, and --precision in the training
command, recorded in the checkpoint and the run's summary."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cupycnn
from cupycnn import layers
from cupycnn.reference.rounding import round_bf16, round_operand, round_tf32
from helpers import randn, rel_err

ROOT = Path(__file__).resolve().parent.parent


def test_set_get_and_the_context_manager():
    assert cupycnn.get_precision() == "fp32"
    cupycnn.set_precision("tf32")
    try:
        assert cupycnn.get_precision() == "tf32"
        with cupycnn.set_precision("bf16") as p:
            assert p == "bf16" == cupycnn.get_precision()
        assert cupycnn.get_precision() == "tf32"
        with pytest.raises(RuntimeError):
            with cupycnn.set_precision("fp32"):
                raise RuntimeError("inside")
        assert cupycnn.get_precision() == "tf32"
    finally:
        cupycnn.set_precision("fp32")
    with pytest.raises(ValueError, match=r"precision must be one of fp32, tf32, bf16, got 'fp16'"):
        cupycnn.set_precision("fp16")
    assert cupycnn.get_precision() == "fp32"


def test_the_environment_sets_the_initial_precision():
    env = dict(os.environ, CUPYCNN_PRECISION="bf16")
    out = subprocess.run([sys.executable, "-c", "import cupycnn; print(cupycnn.get_precision())"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == "bf16", out.stderr
    env["CUPYCNN_PRECISION"] = "half"
    out = subprocess.run([sys.executable, "-c", "import cupycnn"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert "CUPYCNN_PRECISION must be one of fp32, tf32, bf16, got 'half'" in out.stderr


def test_round_operand(rng):
    x = randn(rng, 1000)
    assert round_operand(x, "fp32") is x
    np.testing.assert_array_equal(round_operand(x, "tf32"), round_tf32(x))
    np.testing.assert_array_equal(round_operand(x, "bf16"), round_bf16(x))
    x64 = x.astype(np.float64)
    assert round_operand(x64, "bf16").dtype == np.float64
    # Relative rounding error: at most half an ulp of 10 (tf32) or 7 (bf16) fraction bits.
    assert np.max(np.abs(round_operand(x64, "tf32") / x64 - 1)) <= 2.0**-11
    assert np.max(np.abs(round_operand(x64, "bf16") / x64 - 1)) <= 2.0**-8
    assert np.max(np.abs(round_operand(x64, "bf16") / x64 - 1)) > 2.0**-10


def _layer_step(device, precision, x, dy_conv, dy_dense, seed):
    """Forward and backward of a Conv2D and a Dense layer on `device` at `precision`."""
    cupycnn.use(device)
    cupycnn.manual_seed(seed)
    conv = layers.Conv2D(3, 8, 3, stride=2, padding=1)
    dense = layers.Dense(20, 7)
    with cupycnn.set_precision(precision):
        y = conv.forward(cupycnn.asarray(x))
        dx = conv.backward(cupycnn.asarray(dy_conv))
        z = dense.forward(cupycnn.asarray(x.reshape(len(x), -1)[:, :20].copy()))
        dz = dense.backward(cupycnn.asarray(dy_dense))
    return [cupycnn.asnumpy(a) for a in (y, dx, conv.grads["weight"], z, dz,
                                         dense.grads["weight"])]


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_all_three_devices_agree_at_each_precision(kernel_device, rng, precision):
    """numpy rounds operands as the tensor cores do, so sim (and cuda) and numpy agree to FP32
    accumulation; and the precision really changes the result (numpy tf32/bf16 vs fp32)."""
    x = randn(rng, 2, 3, 9, 7)
    dy_conv, dy_dense = randn(rng, 2, 8, 5, 4), randn(rng, 2, 7)
    seed = int(rng.integers(1 << 30))
    kernels = _layer_step(kernel_device, precision, x, dy_conv, dy_dense, seed)
    numpy = _layer_step("numpy", precision, x, dy_conv, dy_dense, seed)
    numpy_fp32 = _layer_step("numpy", "fp32", x, dy_conv, dy_dense, seed)
    for k, n, f in zip(kernels, numpy, numpy_fp32):
        assert rel_err(k, n) < 1e-5
        if precision != "fp32":
            assert rel_err(n, f) > 1e-5         # the rounding happened


def test_training_command_takes_and_records_the_precision(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("CUPYCNN_DEVICE", None)
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "train_cifar.py"), "--dataset",
                          "synthetic", "--synthetic-size", "64", "--epochs", "1", "--batch-size",
                          "32", "--model", "simple_cnn", "--device", "numpy", "--precision",
                          "bf16", "--log-dir", "run", "--no-progress", "--no-augment"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "device numpy at bf16" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert summary["precision"] == "bf16"
    checkpoint = cupycnn.checkpoint.load_checkpoint(str(tmp_path / "run" / "last.h5"))
    assert checkpoint.config["precision"] == "bf16"
    bad = subprocess.run([sys.executable, str(ROOT / "examples" / "train_cifar.py"),
                          "--precision", "fp16"], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'fp16'" in bad.stderr
