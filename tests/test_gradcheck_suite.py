"""Every case of the gradient-check suite passes: the reference's backward against finite
differences in float64, and the kernels' backward (sim) against the same derivative in float32."""
import subprocess
import sys

import pytest

from cupycnn import gradcheck_suite

CASES = gradcheck_suite.CASES


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_float64_reference_backward(case):
    (_, result), = [r for r in gradcheck_suite.run("numpy") if r[0] is case] or [(None, None)]
    assert result.passed, result.table()
    assert result.tolerance == 1e-6


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kernel_backward_on_sim(case):
    import numpy as np
    from cupycnn.gradcheck import gradcheck
    args = case.build(np.random.default_rng(0))
    result = gradcheck(device="sim", name=case.name, **args)
    assert result.passed, result.table()


def test_command_line_table():
    out = subprocess.run([sys.executable, "-m", "cupycnn.gradcheck", "--layer", "Dense"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Dense" in out.stdout and "pass" in out.stdout and "FAIL" not in out.stdout
    bad = subprocess.run([sys.executable, "-m", "cupycnn.gradcheck", "--layer", "Nope"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no gradient-check case for layer 'Nope'" in bad.stderr
