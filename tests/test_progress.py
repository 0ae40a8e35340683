"""The progress bar: rate, ETA, metrics; quiet when disabled."""
import io

from cupycnn.progress import Progress, format_seconds


def test_log_lines_with_rate_eta_and_metrics():
    out = io.StringIO()
    bar = Progress(total=4, desc="epoch 1/2", unit="batch", stream=out, log_interval=0.0,
                   unit_scale=32)
    for i in range(4):
        bar.update(1, loss=1.0 / (i + 1))
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    assert lines[-1].startswith("epoch 1/2 100% [########################] 4/4 ")
    assert "img/s" in lines[-1] and "loss=0.25" in lines[-1]
    assert "<" in lines[0]          # elapsed<ETA


def test_disabled_bar_prints_nothing():
    out = io.StringIO()
    bar = Progress(total=3, stream=out, enabled=False)
    bar.update(3)
    bar.close()
    assert out.getvalue() == ""


def test_format_seconds():
    assert format_seconds(5) == "00:05"
    assert format_seconds(3725) == "1:02:05"
    assert format_seconds(None) == "?"
