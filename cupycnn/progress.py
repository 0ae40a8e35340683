"""A progress bar for long work: done/total, a bar, rate, elapsed time, ETA, and live metrics.

    bar = Progress(total=len(loader), desc="epoch 3/30", unit="batch")
    for batch in loader:
        ...
        bar.update(1, loss=0.43, acc=0.87)
    bar.close()

On a terminal it redraws one line in place at most 10 times a second; when stderr is not a
terminal (a log file, CI) it writes a plain line every `log_interval` seconds and at the end.
`enabled=False` makes it silent (ranks other than 0 in data-parallel training).
"""
import sys
import time


def format_seconds(seconds):
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _format_metric(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    BAR_WIDTH = 24
    REDRAW_SECONDS = 0.1

    def __init__(self, total, desc="", unit="it", stream=None, enabled=True, log_interval=30.0,
                 unit_scale=1):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_interval = log_interval
        self.unit_scale = unit_scale        # e.g. batch size, to report images/s for batches
        self.done = 0
        self.metrics = {}
        self.start = time.perf_counter()
        # On a terminal the bar appears at once; in a log, first after log_interval seconds
        # (and at the end), so short loops write one line.
        self._last_draw = 0.0 if self.interactive else self.start
        self._closed = False

    def update(self, n=1, **metrics):
        self.done += n
        self.metrics.update(metrics)
        if not self.enabled:
            return
        now = time.perf_counter()
        interval = self.REDRAW_SECONDS if self.interactive else self.log_interval
        if now - self._last_draw >= interval:
            self._draw(now)

    def due(self):
        """True when the next update() will redraw: the moment to refresh costly metrics."""
        interval = self.REDRAW_SECONDS if self.interactive else self.log_interval
        return time.perf_counter() - self._last_draw >= interval

    def set_metrics(self, **metrics):
        self.metrics.update(metrics)

    def line(self, now=None):
        now = time.perf_counter() if now is None else now
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [self.desc] if self.desc else []
        if self.total:
            frac = min(1.0, self.done / self.total)
            filled = int(frac * self.BAR_WIDTH)
            bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
            eta = (self.total - self.done) / rate if rate > 0 else None
            parts.append(f"{100 * frac:3.0f}% [{bar}] {self.done}/{self.total}")
        else:
            eta = None
            parts.append(f"{self.done}")
        shown_rate = rate * self.unit_scale
        unit = self.unit if self.unit_scale == 1 else "img"
        parts.append(f"{shown_rate:.1f} {unit}/s")
        parts.append(f"{format_seconds(elapsed)}<{format_seconds(eta)}"
                     if self.total else format_seconds(elapsed))
        parts += [f"{k}={_format_metric(v)}" for k, v in self.metrics.items()]
        return " ".join(parts)

    def _draw(self, now, final=False):
        self._last_draw = now
        text = self.line(now)
        if self.interactive:
            self.stream.write("\r" + text + "\033[K" + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw(time.perf_counter(), final=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
