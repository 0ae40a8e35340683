"""Every case of the gradient-check suite passes: the reference's backward against finite
differences in float64, and the kernels' backward (sim) against the same derivative in float32.
And `python -m cupycnn.gradcheck_suite`: its table, its exit status, its messages."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cupycnn
from cupycnn import gradcheck_suite
from cupycnn.gradcheck import gradcheck

CASES = gradcheck_suite.CASES


def _command(*args, code=None):
    argv = [sys.executable, "-c", code] if code else [sys.executable, "-m",
                                                               "cupycnn.gradcheck_suite"]
    return subprocess.run(argv + list(args), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_float64_reference_backward(case):
    result = gradcheck(device="numpy", name=case.name, **case.build(np.random.default_rng(0)))
    assert result.passed, result.table()
    assert result.tolerance == 1e-6


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kernel_backward_on_sim(case):
    result = gradcheck(device="sim", name=case.name, **case.build(np.random.default_rng(0)))
    assert result.passed, result.table()


def test_suite_covers_the_loss_the_composites_and_a_network():
    families = set(gradcheck_suite.families())
    assert {"SoftmaxCrossEntropy", "Sequential", "Residual", "Network"} <= families
    label_dtypes = {np.asarray(c.build(np.random.default_rng(0))["labels"]).dtype
                    for c in CASES if c.family == "SoftmaxCrossEntropy"}
    assert len(label_dtypes) >= 4
    # The network case checks from the loss back to the input and every parameter.
    (network,) = [c for c in CASES if c.family == "Network"]
    args = network.build(np.random.default_rng(0))
    result = gradcheck(**args)
    assert args["loss"] is not None
    assert [t.name for t in result.tensors] == \
        ["input"] + [name for name, _ in args["layer"].named_parameters()]
    assert len(result.tensors) > 8


def test_same_seed_same_case():
    for c in CASES:
        if c.family in ("Residual", "Network"):
            a, b = (c.build(np.random.default_rng(3))["layer"].state_dict() for _ in range(2))
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


def test_command_line_table():
    out = _command("--layer", "Dense")
    assert out.returncode == 0, out.stderr
    assert "Dense" in out.stdout and "pass" in out.stdout and "FAIL" not in out.stdout
    bad = _command("--layer", "Nope")
    assert bad.returncode == 2 and "no gradient-check case for layer 'Nope'" in bad.stderr


def test_command_line_loss_and_network_on_sim():
    out = _command("--device", "sim", "--layer", "network")
    assert out.returncode == 0, out.stderr
    header, columns, *rows, summary = out.stdout.strip().splitlines()
    assert header.startswith("gradient check on sim") and "1e-05" in header
    assert columns.split()[:2] == ["layer", "tensor"] and columns.rstrip().endswith("result")
    assert all(r.startswith("Network") and r.endswith("pass") for r in rows)
    assert any(" 2.main.0.weight " in r for r in rows) and any(" input " in r for r in rows)
    assert summary == "1 of 1 cases passed"


def test_command_line_exit_status_1_when_a_case_fails():
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from cupycnn import gradcheck_suite
        from helpers import WrongScale      # y = 2x, with a backward that forgets the 2

        gradcheck_suite.case("WrongScale")(lambda rng: dict(layer=WrongScale(),
                                                            x=rng.standard_normal((2, 3))))
        sys.exit(gradcheck_suite.main(sys.argv[1:]))
    """)
    out = _command("--layer", "WrongScale", code=code)
    assert out.returncode == 1, out.stderr
    (row,) = [line for line in out.stdout.splitlines() if line.startswith("WrongScale ")]
    assert row.split()[1:] == ["input", "3.33e-01", "FAIL"]
    assert "0 of 1 cases passed; failed: WrongScale" in out.stdout


def test_command_line_cuda_without_a_gpu_says_so_in_one_sentence():
    out = _command("--device", "cuda", "--layer", "SoftmaxCrossEntropy")
    if cupycnn.cuda_available():          # a GPU machine runs the loss's kernels instead
        assert out.returncode == 0, out.stdout + out.stderr
        assert "gradient check on cuda" in out.stdout
        return
    assert out.returncode == 2 and out.stdout == ""
    message = out.stderr.strip()
    assert "\n" not in message and message.count(". ") == 0 and message.endswith(".")
    assert message.startswith("error: --device cuda needs a usable GPU and there is none here")
    assert "--device sim" in message
