"""docs/layers/loss_containers.md stays true: its examples run as they stand."""
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "layers" / "loss_containers.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_the_gradcheck_example_runs_and_passes(capsys):
    (example,) = [b for b in _python_blocks() if "TANH_CU" in b]
    exec(compile(example, str(DOC), "exec"), {"__name__": "doc_example"})
    out = capsys.readouterr().out
    assert out.count("pass") == 7 and "FAIL" not in out
    assert "Sequential(...)                          2.bias" in out


def test_the_container_example_runs():
    (example,) = [b for b in _python_blocks() if "OrderedDict(fc1=" in b]
    names = {}
    exec(compile(example, str(DOC), "exec"), names)
    assert list(names["model"].state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight",
                                                 "fc2.bias"]
    assert list(names["down"].state_dict()) == ["main.0.weight", "main.0.bias",
                                                "shortcut.weight", "shortcut.bias"]
