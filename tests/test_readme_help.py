"""The README shows `cupycnn --help` and every subcommand's help exactly as the command prints
them (at 100 columns). After changing an option, rewrite them:

    python tests/test_readme_help.py --write
"""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
COMMANDS = ["", "train", "evaluate", "predict", "gradcheck", "bench", "info", "data",
            "data make-shards", "data inspect"]
_BLOCK = re.compile(r"(<!-- help: (cupycnn[^>]*?) -->\n```text\n)(.*?)(```)", re.S)


def help_text(command):
    """What `cupycnn COMMAND --help` prints, 100 columns wide."""
    env = dict(os.environ, COLUMNS="100")
    args = command.split()[1:] + ["--help"]
    out = subprocess.run([sys.executable, "-m", "cupycnn", *args], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.replace("python -m cupycnn", "cupycnn")


def unexplained_options(text):
    """The options a --help text lists without a word of help: an option line with no text
    after it, and none on the next line either."""
    lines = text.splitlines() + [""]
    bare = []
    for line, following in zip(lines, lines[1:]):
        entry = re.match(r"^  (-\S.*?)(?:\s{2,}\S.*)?$", line)
        if entry and re.match(r"^  \S.*?\s{2,}\S", line) is None and (
                not following.startswith("     ") or following.lstrip().startswith("-")):
            bare.append(entry.group(1))
    return bare


def test_the_readme_shows_every_commands_help():
    text = README.read_text(encoding="utf-8")
    shown = {match.group(2): match.group(3) for match in _BLOCK.finditer(text)}
    assert sorted(shown) == sorted(f"cupycnn {c} --help".replace("  ", " ") for c in COMMANDS)
    for command, block in shown.items():
        assert block == help_text(command), (
            f"README.md's `{command}` is out of date: run python tests/test_readme_help.py "
            f"--write")
        assert unexplained_options(block) == [], command            # every option explained
        assert "(default: None)" not in block and "(default: False)" not in block, command


def test_the_bare_option_finder_finds_bare_options():
    text = ("options:\n  -h, --help            show this help\n  --epochs EPOCHS\n"
            "  --batch-size BATCH_SIZE\n                        global batch\n  --seed SEED\n")
    assert unexplained_options(text) == ["--epochs EPOCHS", "--seed SEED"]


def write():
    text = README.read_text(encoding="utf-8")
    text = _BLOCK.sub(lambda m: m.group(1) + help_text(m.group(2)) + m.group(4), text)
    README.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        raise SystemExit(__doc__)
