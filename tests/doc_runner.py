"""Run a documentation page as a reader would: every code block, in order, in one shell.

The page's blocks become one bash script, run in a copy of the repository (so that a page may
add files to the library's tree, as WRITING_A_LAYER.md does, without touching the real one):

    ```bash / ```sh            the commands, as they stand (a `cd` lasts for what follows)
    first line `# file: PATH` or `// file: PATH`
                               the block is written to PATH (relative to the current folder)
    first line `# append to: PATH`
                               the block is appended to PATH
    ```python (no such line)   run by `python -` in the current folder
    anything else (```text, ``` output samples)
                               not run

`python`, `mpiexec` and `cupycnn` are the test's own environment's (its interpreter's folder
first on PATH; where the `cupycnn` console script is not installed, as in a virtual environment
made before it existed, a stand-in runs `python -m cupycnn`), and the copy of the library is the
one Python imports (PYTHONPATH). A block preceded by `<!-- not run: REASON -->` is skipped, and
the test that runs the page lists what it skipped and why.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("cupycnn", "kernels", "examples", "tests", "docs", "benchmarks", "setup.py",
          "pyproject.toml", "README.md")
_FENCE = re.compile(r"^```([\w+-]*)\s*$")
_SKIP = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->")


def blocks(page):
    """[(language, text, skip reason or None)] for every fenced block of the page, in order."""
    found, lines, i = [], Path(page).read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = _SKIP.search(before)
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        found.append((match.group(1).lower(), "\n".join(lines[i + 1:j]) + "\n",
                      skip.group(1) if skip else None))
        i = j + 1
    return found


def script(page):
    """(the bash script the page's blocks make, [(skipped block's first line, reason)])."""
    parts, skipped = [], []
    for n, (language, text, skip) in enumerate(blocks(page)):
        first = text.splitlines()[0] if text.strip() else ""
        if skip is not None:
            skipped.append((first, skip))
            continue
        delimiter = f"CUPYCNN_DOC_BLOCK_{n}"
        target = re.match(r"^(?:#|//)\s*(file|append to):\s*(\S+)\s*$", first)
        if target:
            path = target.group(2)
            write = ">" if target.group(1) == "file" else ">>"
            parts.append(f'mkdir -p "$(dirname {path})"\ncat {write} {path} <<\'{delimiter}\'\n'
                         f"{text}{delimiter}")
        elif language in ("bash", "sh", "shell"):
            parts.append(text)
        elif language == "python":
            parts.append(f"python - <<'{delimiter}'\n{text}{delimiter}")
    return "\n".join(parts) + "\n", skipped


def copy_repository(target):
    """The library's sources, tests and docs, as a checkout holds them, at `target`."""
    target = Path(target)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, target / name)
    # What an editable install maps `cupycnn.kernels` to: the checkout's kernels/.
    (target / "cupycnn" / "kernels").symlink_to(Path("..") / "kernels",
                                                target_is_directory=True)
    return target


def environment(shims):
    """The test environment's interpreter and scripts first on PATH, the copy on PYTHONPATH."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env.pop("CUPYCNN_DEVICE", None)
    shims = Path(shims)
    shims.mkdir(parents=True, exist_ok=True)
    (shims / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    if not (bin_dir / "cupycnn").exists():
        (shims / "cupycnn").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cupycnn "$@"\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    env["PATH"] = f"{shims}{os.pathsep}{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_page(page, workdir, timeout):
    """Run `page` in a fresh copy of the repository under `workdir`: the finished process
    (stdout and stderr together in .stdout) and the skipped blocks."""
    workdir = Path(workdir)
    tree = copy_repository(workdir / "repository")
    text, skipped = script(page)
    (workdir / "page.sh").write_text(text, encoding="utf-8")
    env = environment(workdir / "bin")
    env["PYTHONPATH"] = str(tree)
    done = subprocess.run(["bash", "-euo", "pipefail", str(workdir / "page.sh")], cwd=tree,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    return done, skipped
