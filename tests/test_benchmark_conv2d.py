"""benchmarks/conv2d.py before a GPU sees it: --dry-run runs every version of every product on sim
against PyTorch's CPU convolution and the float64 reference; a wrong result is flagged and fails
the run; the contenders are timed in turns (interleaved), medians taken."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import conv2d as bench  # noqa: E402


def _rows(out, label):
    return [line for line in out.splitlines() if line.startswith(label)]


def test_dry_run_on_sim_runs_every_version_and_product(capsys, tmp_path):
    pytest.importorskip("torch")
    figures = tmp_path / "figures.json"
    assert bench.main(["--dry-run", "--json", str(figures)]) == 0
    out = capsys.readouterr().out
    rows = _rows(out, "64->128 1x1 s2 32x32")
    assert len(rows) == len(bench.VERSIONS) * len(bench.PRODUCTS), out
    for line in rows:
        cells = line.split()
        precision = next(p for p in bench.TOLERANCE if f" {p} " in line)
        assert float(cells[-1]) < bench.TOLERANCE[precision] and "WRONG" not in line, line
        assert "-" not in cells[-6:-1], line                     # both PyTorch layouts ran
    data = json.loads(figures.read_text(encoding="utf-8"))
    for tag in ("tiled fp32", "tensor_core tf32", "tensor_core bf16"):
        assert data[f"{tag} products under 70% of torch CPU"].endswith("of 3")
        assert data[f"{tag} x torch CPU (faster layout), lowest"] > 0


def test_a_wrong_result_is_flagged_and_fails_the_run(capsys, monkeypatch):
    real = bench.ops.conv2d_forward
    monkeypatch.setattr(bench.ops, "conv2d_forward",
                        lambda *a, **k: real(*a, **k) * 1.01)          # 1% off
    assert bench.main(["--dry-run", "--versions", "tiled", "--precisions", "fp32"]) == 1
    captured = capsys.readouterr()
    (forward,) = [r for r in _rows(captured.out, "64->128") if " forward " in r]
    assert forward.endswith("WRONG") and "WRONG results" in captured.err
    assert all("WRONG" not in r for r in _rows(captured.out, "64->128") if " forward " not in r)


def test_contenders_take_turns_and_medians_are_reported():
    calls = []

    class FakeTimer:
        def sync(self):
            pass

        def __call__(self, fn, count, host):
            calls.append(fn())
            return {"a": [3.0, 1.0, 2.0], "b": [5.0, 4.0, 6.0]}[calls[-1]][
                sum(c == calls[-1] for c in calls[:-1])]

    seconds, first = bench.measure({"a": lambda: "a", "b": lambda: "b"}, FakeTimer(), 3)
    assert calls == ["a", "b"] * 3                     # round by round, in turns
    assert seconds == {"a": 2.0, "b": 5.0} and first == {"a": "a", "b": "b"}


def test_the_shapes_are_resnet18s_and_the_summary_compares_with_the_faster_layout():
    labels = [c.label for c, _ in bench.roofline.distinct(bench.roofline.resnet18_convolutions(1))]
    assert len(labels) == 11 and labels[0] == "3->64 3x3 s1 32x32"
    rows = [{"precision": "tf32", "version": "tensor_core", "shape": s, "product": "forward",
             "floor": 0.5, "x NCHW": a, "x NHWC": b} for s, a, b in
            (("s1", 2.0, 0.5), ("s2", 1.0, 1.0))]
    figures = bench.summary(rows, "cuDNN", [])
    assert figures["tensor_core tf32 x cuDNN (faster layout), lowest"] == 0.5
    assert figures["tensor_core tf32 lowest at"] == "s1 forward"
    assert figures["tensor_core tf32 products under 70% of cuDNN"] == "1 of 2"
    assert np.isclose(figures["tensor_core tf32 x cuDNN (faster layout), geomean"],
                      np.sqrt(0.5), rtol=1e-3)


def test_the_gpu_timer_queues_the_calls_behind_a_spin_and_times_them_with_events(monkeypatch):
    """GpuTimer's logic, on a stand-in for CuPy's events (the GPU path has no GPU here)."""
    log = []

    class FakeEvent:
        def record(self):
            log.append(("record", self))

        def synchronize(self):
            log.append(("sync", self))

    class Stub:
        class cuda:
            Event = FakeEvent

            class runtime:
                pass

            @staticmethod
            def get_current_stream():
                return type("S", (), {"ptr": 0})()

            @staticmethod
            def get_elapsed_time(start, stop):
                return 6.0                                         # milliseconds

        @staticmethod
        def RawKernel(code, name):
            assert "%%globaltimer" in code and name == "spin"
            return lambda grid, block, args: log.append(("spin", int(args[0])))

    monkeypatch.setitem(sys.modules, "cupy", Stub)
    timer = bench.GpuTimer(None)
    assert timer(lambda: log.append(("call",)), 3, host_seconds=1e-4) == pytest.approx(2e-3)
    kinds = [entry[0] for entry in log]
    assert kinds == ["spin", "record", "call", "call", "call", "record", "sync"]
    assert log[0][1] == int(1e9 * (2 * 3 * 1e-4 + 20e-6))      # covers queueing the 3 calls
    torch = pytest.importorskip("torch")
    bench.set_cudnn_tf32(torch, False)
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    bench.set_cudnn_tf32(torch, True)
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"


def test_precompile_knows_every_version_and_its_files_exist():
    from cupycnn import runtime
    assert set(bench.VERSION_FILES) == {v for v, _ in bench.VERSIONS} == set(bench.ops.VERSIONS)
    assert {f for files in bench.VERSION_FILES.values() for f in files} <= set(
        runtime.kernel_files())
