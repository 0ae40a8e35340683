"""docs/RELIABILITY.md names the tests that prove each promise: every test it names exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_the_reliability_doc_names_exists():
    text = (ROOT / "docs" / "RELIABILITY.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(?:[\w/]+\.py::)?(test_\w+)`", text))
    files = set(re.findall(r"`(?:tests/)?(test_\w+\.py)(?:::\w+)?`", text))
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
    assert len(named) > 30, named
    assert not named - defined, f"docs/RELIABILITY.md names tests that do not exist: " \
                                f"{sorted(named - defined)}"
    missing = {f for f in files if not (ROOT / "tests" / f).exists()}
    assert not missing, missing
