"""benchmarks/cpu_choices.py times each choice it names: the forced column layouts really run
(and are put back), and each step setting is applied for its own samples and undone after."""
import sys
from pathlib import Path

from cupycnn import cpu
from cupycnn.cpu import conv2d, parallel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import cpu_choices  # noqa: E402


def test_layouts_time_both_layouts_and_restore_the_rule(monkeypatch, capsys):
    forced = []
    original = conv2d.conv2d_forward

    def recording(*a, **k):
        forced.append(conv2d.LAYOUT)
        return original(*a, **k)
    monkeypatch.setattr(conv2d, "conv2d_forward", recording)
    cpu_choices.main(["layouts", "--rounds", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| conv")]
    assert len(rows) == len(cpu_choices.DIGITS_LAYERS)
    assert forced.count("last") == forced.count("planes") == 2 * len(rows)
    assert conv2d.LAYOUT is None


def test_step_settings_are_applied_and_undone(capsys):
    threshold, together, threads = (parallel.MIN_TASK_BYTES, parallel.run_together,
                                    cpu.num_threads())
    cpu_choices.main(["together", "--rounds", "1", "--block", "1"])
    cpu_choices.main(["threshold", "--rounds", "1", "--block", "1", "--threads", "2"])
    out = capsys.readouterr().out
    assert "one after the other" in out and "no threshold" in out
    assert parallel.MIN_TASK_BYTES == threshold and parallel.run_together is together
    assert cpu.num_threads() == threads
