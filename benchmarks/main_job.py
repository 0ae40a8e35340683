"""The README's main job, timed as a user runs it: wall time and CPU time, with BLAS's own thread
count (the baseline: OpenBLAS takes every core) against one BLAS thread (--blas-threads 1, the
digits recipe's default), interleaved so that load from other work on a shared machine falls on
both alike.

    python benchmarks/main_job.py                    # 3 rounds: baseline, one thread, ... x 3
    python benchmarks/main_job.py --rounds 5 --epochs 5
    python benchmarks/main_job.py --compare cpu-path # the references against the CPU path

--compare cpu-path times the same command with CUPYCNN_CPU_PATH=reference (the numpy device as
it was before cupycnn/cpu: every op its NumPy reference) against the default (cupycnn/cpu, the
numpy device's training path), both with the recipe's BLAS threads.

Each run is the README's command (read from README.md, as .ci/run reads it) in a fresh process,
in its own log folder, with --no-progress; the figures: wall time of the process, its CPU time
(user + system, from os.wait4), the training time and test accuracy it prints, and the load
average around it. Medians over the rounds and the ratios one-thread / baseline are printed
last. Why one thread: the job's matrix products (batch 32, 8x8 images, 32 and 64 channels) are
far too small to split; a second OpenBLAS thread busy-waits for work between them, so it costs a
core (CPU time) without taking wall time off, and on a busy machine it competes with the other
work for that core.
"""
import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_main_job():
    """The python command of the README's "set up and run the main job" line, as tokens after
    the interpreter (the setup before it is not timed)."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    command = lines[lines.index("# set up and run the main job") + 1]
    last = command.split("&&")[-1].strip()
    tokens = shlex.split(last)
    if not tokens[0].endswith("python"):
        raise SystemExit(f"the README's main job does not end in a python command: {last!r}")
    return tokens[1:]


def run_once(arguments, log_dir, environment=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(environment or {}))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, *arguments, "--log-dir", str(log_dir),
                                "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"the main job failed ({process.returncode}):\n{output[-3000:]}")
    train = float(re.search(r"training took ([0-9.]+) s", output).group(1))
    accuracy = float(re.search(r"accuracy ([0-9.]+)%", output.split("test:")[-1]).group(1))
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "train": train,
            "accuracy": accuracy, "load": (load_before + os.getloadavg()[0]) / 2}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (default: 3)")
    parser.add_argument("--epochs", type=int, help="override the recipe's 15 epochs")
    parser.add_argument("--compare", choices=["blas-threads", "cpu-path"], default="blas-threads",
                        help="BLAS's own threads against one; or the references against the "
                             "CPU path (cupycnn/cpu)")
    args = parser.parse_args()
    job = readme_main_job() + (["--epochs", str(args.epochs)] if args.epochs else [])
    # name: (extra arguments, environment); the first is the baseline
    if args.compare == "blas-threads":
        variants = {"baseline (BLAS's own threads)": (["--blas-threads", "0"], {}),
                    "one BLAS thread": (["--blas-threads", "1"], {})}
    else:
        variants = {"before (the references)": ([], {"CUPYCNN_CPU_PATH": "reference"}),
                    "after (the CPU path)": ([], {"CUPYCNN_CPU_PATH": "fast"})}
    print(f"the main job: python {' '.join(job)}")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start "
          f"(a shared machine: other work's load falls on both variants, interleaved)")
    results = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for index, (name, (extra, environment)) in enumerate(variants.items()):
                r = run_once(job + extra, Path(tmp) / f"{round_}-{index}", environment)
                results[name].append(r)
                print(f"round {round_ + 1} {name:<30} wall {r['wall']:6.1f} s  cpu "
                      f"{r['cpu']:6.1f} s  training {r['train']:6.1f} s  test "
                      f"{r['accuracy']:.2f}%  load {r['load']:.2f}", flush=True)
    medians = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
               for name, runs in results.items()}
    (base_name, base), (name, other) = medians.items()
    print(f"\nmedians over {args.rounds} rounds:")
    for name, m in medians.items():
        print(f"  {name:<30} wall {m['wall']:6.1f} s  cpu {m['cpu']:6.1f} s  training "
              f"{m['train']:6.1f} s  test {m['accuracy']:.2f}%  load {m['load']:.2f}")
    print(f"  {name} / {base_name}: wall x{other['wall'] / base['wall']:.2f}, cpu "
          f"x{other['cpu'] / base['cpu']:.2f}, training x{other['train'] / base['train']:.2f}")


if __name__ == "__main__":
    main()
