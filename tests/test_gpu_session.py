"""benchmarks/gpu_session.sh is tested before a GPU sees it: `--dry-run` runs every step on
sim/numpy at tiny sizes and must leave what a lent GPU machine can send back (at most 8 files in
$OUT: here exactly SUMMARY.txt, figures.json and logs.tar.gz) and print the table last."""
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"


def _table():
    text = SCRIPT.read_text(encoding="utf-8")
    table = text[text.index("STEPS=$(cat <<'EOF'\n"):].split("\n", 1)[1].split("\nEOF\n", 1)[0]
    return [[cell.strip() for cell in line.split("|")] for line in table.splitlines()
            if line.strip()]


def _steps():
    return [row[0] for row in _table()]


# The lease: 15 minutes of device time, a machine start of 1-2 minutes in it, and room left for
# a second run when the first one fails.
MOST_SECONDS = 420


def test_the_session_fits_the_lease_twice():
    """The steps' limits add up to at most TOTAL_SECONDS, and that is at most 420 s: run under
    its limits, the whole script leaves room for a rerun within one lease."""
    text = SCRIPT.read_text(encoding="utf-8")
    total = int(re.search(r"^TOTAL_SECONDS=\$\{TOTAL_SECONDS:-(\d+)\}", text, re.M).group(1))
    limits = {row[0]: int(row[1]) for row in _table()}
    assert all(len(row) == 4 for row in _table())
    assert sum(limits.values()) <= total <= MOST_SECONDS, (sum(limits.values()), total, limits)
    # What the session is for stays in it.
    assert {"smoke", "ceilings", "conv2d", "resnet18_step", "step_graph", "imagenet_pipeline",
            "distributed"} <= set(limits)
    docs = (ROOT / "docs" / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert f"all under {total} s" in docs


def test_dry_run_runs_every_step_and_leaves_three_files(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True,
                         timeout=600, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["SUMMARY.txt", "figures.json", "logs.tar.gz"] and len(files) <= 8
    steps = _steps()
    assert steps[0] == "smoke" and len(steps) == len(set(steps)) >= 10
    record = json.loads((out / "figures.json").read_text(encoding="utf-8"))
    assert record["dry_run"] is True
    verdicts = {s["step"]: s["verdict"] for s in record["steps"]}
    assert list(verdicts) == steps
    assert all(v == "ok" for v in verdicts.values()), verdicts
    figures = record["figures"]
    assert figures["smoke.from mpi4py import MPI"]["value"].startswith("ok")
    assert figures["smoke.gpu"]["value"] == "fake GPU (tests/fake_cupy.py)"   # cuda steps: fake
    assert isinstance(figures["ceilings.copy bandwidth"]["value"], float)
    assert any(name.startswith("resnet18_step.") for name in figures)
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"logs/{s}.log" for s in steps} <= names
    summary = (out / "SUMMARY.txt").read_text(encoding="utf-8")
    for s in steps:
        assert re.search(rf"^{s} +\d+ s / +\d+ s  ok$", summary, re.M), summary
    # The compact table is the last thing printed: what the device tool's output tail keeps.
    assert run.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])
    assert len(run.stdout) < 12000
