"""Text files are read as UTF-8 whatever the locale: CI and many servers run with an ASCII one
(LANG unset, Python's UTF-8 mode off), where `Path.read_text()` fails on the README's first dash."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ["cupycnn", "tests", "benchmarks", "examples"]


def test_every_read_text_names_its_encoding():
    unnamed = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "read_text" and not node.args
                        and not any(k.arg == "encoding" for k in node.keywords)):
                    unnamed.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not unnamed, "read_text() without encoding='utf-8': " + ", ".join(unnamed)
