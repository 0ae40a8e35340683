"""benchmarks/conv2d.py, dry-run on sim (the GPU measurement is the same code on cuda): every
version of every product runs and prints its row; the roofline table adds up."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import conv2d as bench  # noqa: E402


def test_dry_run_on_sim_prints_every_version_and_product(capsys):
    assert bench.main(["--device", "sim", "--batch", "1", "--layers", "1x1 64->128",
                       "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("1x1 64->128 s2")]
    assert len(rows) == len(bench.VERSIONS) * len(bench.PRODUCTS)
    for line in rows:
        err = float(line.split()[-1])
        assert err < (1e-2 if "bf16" in line else 1e-3 if "tf32" in line else 1e-5), line


def test_roofline_floor_is_the_larger_of_compute_and_memory(capsys):
    s = bench.shapes(bench.LAYERS[1], 256)             # 64 -> 64 at 32x32
    assert bench.flops(s) == 2 * 256 * 64 * 32 * 32 * 64 * 9
    assert bench.compulsory_bytes(s, "forward") == 4 * (2 * 256 * 64 * 32 * 32 + 64 * 64 * 9)
    assert bench.floor_seconds(s, "forward", "fp32") == bench.flops(s) / 67e12
    assert bench.floor_seconds(s, "forward", "bf16") == bench.compulsory_bytes(s, "forward") / 4.3e12
    assert sum(layer[-1] for layer in bench.LAYERS) == 20     # ResNet-18's convolutions
    assert bench.main(["--roofline"]) == 0
    out = capsys.readouterr().out
    assert "| **the step's 20 convolutions, 3 products each** |" in out
    assert "measured" in out and "datasheet" in out
