"""`pip install .` from another directory gives a package that finds its kernels."""
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_install_from_another_directory_ships_and_finds_the_kernels(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps",
                            "--no-build-isolation", "--target", str(target), str(ROOT)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    installed_kernels = sorted(p.name for p in (target / "cupycnn" / "kernels").iterdir())
    shipped = sorted(p.name for p in (ROOT / "kernels").iterdir() if p.suffix in (".cu", ".cuh"))
    assert set(shipped) <= set(installed_kernels)
    assert (target / "cupycnn" / "sim" / "include" / "simt.h").exists()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = textwrap.dedent("""
        import numpy as np, cupycnn
        from cupycnn import runtime
        from cupycnn.ops import gemm
        cupycnn.use("sim")
        print(cupycnn.__file__)
        print(runtime.kernel_dir())
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        print(gemm.gemm(a, a, transpose_b=True).tolist())
    """)
    env = dict(os.environ, PYTHONPATH=str(target), CUPYCNN_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    module_file, kernel_dir, product = run.stdout.splitlines()
    assert module_file.startswith(str(target))
    assert kernel_dir.startswith(str(target))
    assert product == "[[5.0, 14.0], [14.0, 50.0]]"


@pytest.mark.slow
def test_wheel_carries_kernels_and_emulator_header(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(tmp_path.glob("cupycnn-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for cu in (ROOT / "kernels").glob("*.cu"):
        assert f"cupycnn/kernels/{cu.name}" in names
    assert "cupycnn/kernels/common.cuh" in names
    assert "cupycnn/sim/include/simt.h" in names
    assert not any(n.startswith("tests/") for n in names)
