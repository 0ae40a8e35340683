"""The proof in the machine code: every tensor-core kernel, in every tile configuration and
precision, compiled by nvcc for sm_80 and sm_90 with CuPy's options, has the tensor-core mma of
its precision (HMMA.1688.F32.TF32 or HMMA.16816.F32.BF16), ldmatrix (LDSM) and cp.async
(LDGSTS) in its SASS, and spills nothing to local memory (benchmarks/kernel_report.py)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import kernel_report  # noqa: E402

from cupycnn.ops import tiles  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return kernel_report.report(list(tiles.TC_FILES), kernel_report.ARCHS, jobs=2)


def test_every_tensor_core_kernel_runs_on_tensor_cores_without_spills(rows):
    expected = {(f, kernel_report.variant_name(d), a) for f in tiles.TC_FILES
                for d in tiles.variants(f) for a in kernel_report.ARCHS}
    assert {(r.file, r.variant, r.arch) for r in rows} == expected
    assert len(rows) == 6 * len(tiles.TILES) * 2 * 2       # 6 kernels, 2 precisions, 2 archs
    for r in rows:
        where = f"{r.kernel} ({r.variant}, {r.arch})"
        want = "HMMA.16816.F32.BF16" if r.variant.endswith("bf16") else "HMMA.1688.F32.TF32"
        assert r.hmma_kinds == (want,), f"{where}: HMMA {r.hmma_kinds}"
        assert r.counts["LDSM"] > 0 and r.counts["LDGSTS"] > 0, f"{where}: {r.counts}"
        assert r.spill_stores == r.spill_loads == 0, f"{where} spills"
        assert r.stack == 0, f"{where}: {r.stack} bytes of stack"
        assert r.registers <= 255 and r.shared <= 48 * 1024, where


def test_the_fp32_kernels_have_no_hmma():
    rows = kernel_report.report(["gemm"], ("sm_90",))
    assert {r.kernel for r in rows} == {"sgemm_nn", "sgemm_nt", "sgemm_tn"}
    for r in rows:
        assert r.counts["HMMA"] == 0 and r.counts["FFMA"] > 0
