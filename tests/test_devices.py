"""Device selection, the default and its one message, moving arrays."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cupycnn
from cupycnn import devices


def _python(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "CUPYCNN_DEVICE"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=120)


def test_use_and_report():
    for name in ("sim", "numpy"):
        assert cupycnn.use(name) == name
        assert cupycnn.device() == name


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="unknown device 'gpu': expected one of cuda, sim, numpy"):
        cupycnn.use("gpu")


@pytest.mark.skipif(cupycnn.cuda_available(), reason="a GPU is usable here")
def test_cuda_without_a_gpu_is_one_clear_sentence():
    with pytest.raises(cupycnn.DeviceUnavailableError) as info:
        cupycnn.use("cuda")
    message = str(info.value)
    assert message.startswith("the cuda device was asked for, but no GPU is usable: ")
    assert "\n" not in message and "Traceback" not in message
    assert info.value.__cause__ is None or info.value.__suppress_context__


def test_environment_variable_selects_the_device():
    result = _python("import cupycnn; print(cupycnn.device())", CUPYCNN_DEVICE="sim")
    assert result.stdout.strip() == "sim"
    assert result.stderr == ""
    result = _python("import cupycnn; cupycnn.device()", CUPYCNN_DEVICE="tpu")
    assert "CUPYCNN_DEVICE='tpu'" in result.stderr and result.returncode != 0


def test_default_device_is_said_once_on_stderr():
    result = _python("import cupycnn; print(cupycnn.device()); print(cupycnn.device())")
    expected = "cuda" if cupycnn.cuda_available() else "numpy"
    assert result.stdout.split() == [expected, expected]
    lines = [line for line in result.stderr.splitlines() if line.startswith("cupycnn:")]
    assert len(lines) == 1, result.stderr
    if expected == "numpy":
        assert "no usable GPU" in lines[0] and "numpy device" in lines[0]


def test_only_rank_zero_says_it():
    result = _python("import cupycnn; cupycnn.device()", PMI_RANK="1")
    assert "cupycnn:" not in result.stderr


def test_asarray_and_asnumpy_round_trip(rng):
    cupycnn.use("sim")
    host = rng.standard_normal((3, 4)).astype(np.float32)
    dev = cupycnn.asarray(host[:, ::2])           # non-contiguous in, contiguous out
    assert dev.flags.c_contiguous
    np.testing.assert_array_equal(cupycnn.asnumpy(dev), host[:, ::2])
    assert cupycnn.asarray([1, 2], dtype=np.float32).dtype == np.float32


def test_poisoned_allocations(rng):
    cupycnn.use("sim")
    devices.set_poison(True)
    assert np.isnan(devices.empty((3,))).all()
    assert (devices.empty((2,), np.int32) == np.iinfo(np.int32).max).all()
