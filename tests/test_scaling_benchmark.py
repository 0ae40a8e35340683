"""examples/scaling_benchmark.py end to end at its smallest: 1 and 2 CPU ranks, each an mpiexec
run of the script's worker mode; the table, the plot and the JSON results."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "scaling_benchmark.py"


def test_scaling_benchmark_runs_each_rank_count_and_reports(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--ranks", "1,2", "--device", "numpy",
                          "--model", "small", "--per-rank-batch", "2", "--steps", "2",
                          "--warmup", "1", "--bucket-mb", "0.01", "--plot",
                          str(tmp_path / "scaling.png"), "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "| ranks | per-rank batch | global batch | images/s | speedup | efficiency |" \
        in out.stdout
    results = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["results"]
    assert [(r["ranks"], r["per_rank_batch"], r["global_batch"]) for r in results] == \
        [(1, 2, 2), (2, 2, 4)]
    assert results[0]["speedup"] == 1.0 and results[0]["efficiency"] == 1.0
    assert results[1]["backend"] == "mpi" and results[1]["grad_scale"] == 0.5
    assert results[1]["buckets"] > 1                 # 0.01 MB buckets over 90k parameters
    for r in results:
        assert r["images_per_second"] == r["global_batch"] * r["steps"] / r["seconds"] > 0
        assert f"| {r['ranks']} | {r['per_rank_batch']} | {r['global_batch']} | " \
            f"{r['images_per_second']:.1f} |" in out.stdout
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
