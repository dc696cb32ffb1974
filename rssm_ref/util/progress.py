"""Progress of long work (training, evaluation): a bar on a terminal, periodic one-line
reports elsewhere, and the same lines appended to a log file in the run's folder.

Where the lines go
------------------
- ``stream`` is a terminal (``isatty()``): one bar redrawn in place (at most 10 times a
  second), ended by a newline when the task closes.
- ``stream`` is a file, a pipe, a CI log, ``nohup``: one line when a task starts, then a
  line each time another 10 % of it is done or ``interval`` seconds (default 30) have
  passed, whichever comes first, and one when it ends::

      [train residual/seed 0] step 1200/5000 (24%) loss 0.4123 acc 85% 35.2 steps/s elapsed 34s ETA 1m48s

- ``log_path``: every update and every message, one line each, appended (a run that is
  resumed adds to the same log). Nothing below the CLI prints anything else.

Glossary
--------
Progress(stream=None, log_path=None, interval=30.0, tty=None)   the reporter
  .task(label, total, unit="step", start=0) -> Task     .message(text)     .close()
Task.update(done, rate=None, **info)   info keys shown when present: loss, acc (a fraction), L
Task.close(**info)          the final line (done = total unless given)
format_duration(seconds) -> "1h02m", "3m05s", "42s"

``Progress()`` with neither stream nor log is silent (the library's default).

>>> import io
>>> out = io.StringIO()
>>> p = Progress(stream=out, clock=iter(range(0, 1000, 5)).__next__)
>>> t = p.task("train demo", total=100)
>>> for k in range(10, 101, 10):
...     t.update(k, loss=1.0 / k)
>>> t.close()
>>> print(out.getvalue().splitlines()[1])
[train demo] step 10/100 (10%) loss 0.1000 2.0 steps/s elapsed 5s ETA 45s
>>> out.getvalue().splitlines()[-1]
'[train demo] done: 100 steps in 55s (1.8 steps/s) loss 0.0100'
"""
import math
import os
import shutil
import sys
import time

__all__ = ["Progress", "Task", "format_duration"]

LINE_EVERY_PARTS = 10          # a non-terminal stream gets a line per 1/10 of a task
BAR_REDRAW_S = 0.1             # a terminal bar is redrawn at most this often


def format_duration(seconds):
    """Seconds as a short human duration.

    >>> format_duration(42.4), format_duration(185), format_duration(3725), format_duration(None)
    ('42s', '3m05s', '1h02m', '?')
    """
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _rate_text(rate, unit):
    """Units per second, compact.

    >>> _rate_text(41.37, "step"), _rate_text(3152307.7, "token"), _rate_text(23456, "token")
    ('41.4 steps/s', '3.2M tokens/s', '23k tokens/s')
    """
    if rate >= 1e6:
        num = f"{rate / 1e6:.1f}M"
    elif rate >= 1e4:
        num = f"{rate / 1e3:.0f}k"
    elif rate >= 100:
        num = f"{rate:.0f}"
    else:
        num = f"{rate:.1f}"
    return f"{num} {unit}s/s"


def _info_text(info):
    parts = []
    if info.get("L") is not None:
        parts.append(f"L {info['L']}")
    if info.get("loss") is not None:
        parts.append(f"loss {info['loss']:.4f}")
    if info.get("acc") is not None:
        parts.append(f"acc {100 * info['acc']:.0f}%")
    return " ".join(parts)


class Task:
    """One counted piece of work (``total`` units); made by :meth:`Progress.task`."""

    def __init__(self, progress, label, total, unit, start=0):
        self.p, self.label, self.total, self.unit = progress, label, max(1, int(total)), unit
        self.t0 = progress.clock()
        self.done = self.start = int(start)   # a resumed run starts past 0
        self.rate = None                       # given by the caller, else measured here
        self.info = {}
        self.last_share = 0          # shares of LINE_EVERY_PARTS already reported
        self.last_line_t = self.t0
        self.last_draw_t = -math.inf
        self.closed = False
        self.p._line(f"[{label}] start: {self.total} {unit}s", log=True, stream=not self.p.tty)

    def _rate(self, now):
        if self.rate:
            return self.rate
        dt = now - self.t0
        return (self.done - self.start) / dt if dt > 0 and self.done > self.start else None

    def _line(self, now):
        pct = 100.0 * self.done / self.total
        text = f"[{self.label}] {self.unit} {self.done}/{self.total} ({pct:.0f}%)"
        status, eta = self._status(now)
        return text + status + f" elapsed {format_duration(now - self.t0)} ETA {format_duration(eta)}"

    def _status(self, now):
        """(" info rate" text, ETA in seconds or None): what a line and a bar both show."""
        rate = self._rate(now)
        eta = (self.total - self.done) / rate if rate else None
        text = ""
        extra = _info_text(self.info)
        if extra:
            text += " " + extra
        if rate:
            text += " " + _rate_text(rate, self.unit)
        return text, eta

    def update(self, done, rate=None, **info):
        """Record that ``done`` units (cumulative) are finished. ``rate``: units per second
        if the caller measures it (else measured here); ``info``: loss, acc, L."""
        now = self.p.clock()
        self.rate = rate
        self.done = min(int(done), self.total)
        self.info = {k: v for k, v in info.items() if v is not None}
        line = self._line(now)
        self.p._line(line, log=True, stream=False)
        if self.p.tty:
            if now - self.last_draw_t >= BAR_REDRAW_S or self.done >= self.total:
                self.p._bar(self, now)
                self.last_draw_t = now
        else:
            share = self.done * LINE_EVERY_PARTS // self.total      # integers: no rounding
            if share > self.last_share or now - self.last_line_t >= self.p.interval:
                self.p._line(line, log=False, stream=True)
                self.last_line_t = now
                self.last_share = share

    def close(self, done=None, **info):
        """The task's last line: units done, wall time, mean rate, last ``info``."""
        if self.closed:
            return
        self.closed = True
        now = self.p.clock()
        if done is not None:
            self.done = int(done)
        elif self.done == 0:
            self.done = self.total
        self.info.update({k: v for k, v in info.items() if v is not None})
        rate = self._rate(now)
        text = (f"[{self.label}] done: {self.done} {self.unit}s in "
                f"{format_duration(now - self.t0)}" + (f" ({_rate_text(rate, self.unit)})" if rate else ""))
        extra = _info_text(self.info)
        if self.p.tty:
            self.p._end_bar()
        self.p._line(text + (" " + extra if extra else ""), log=True, stream=True)


class Progress:
    """The reporter: a bar on a terminal, periodic lines elsewhere, a log file.

    ``stream``: where to show progress (``sys.stderr`` from the CLI; None: nowhere);
    ``log_path``: a file the lines are appended to (its folder must exist); ``interval``:
    the longest gap in seconds between two lines on a non-terminal stream; ``tty``:
    force the terminal (True) or line (False) style (default: ``stream.isatty()``).
    """

    def __init__(self, stream=None, log_path=None, interval=30.0, tty=None, clock=None):
        self.stream = stream
        self.log_path = os.fspath(log_path) if log_path else None
        self.interval = float(interval)
        if tty is None:
            tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.tty = bool(tty) and stream is not None
        self.clock = clock or time.perf_counter
        self._bar_open = False

    @classmethod
    def to_stderr(cls, log_path=None, **kwargs):
        """Show on ``sys.stderr`` (a bar on a terminal, lines otherwise)."""
        return cls(stream=sys.stderr, log_path=log_path, **kwargs)

    def with_log(self, log_path):
        """The same reporter appending to ``log_path`` instead."""
        return Progress(self.stream, log_path, self.interval, self.tty, self.clock)

    def task(self, label, total, unit="step", start=0):
        """Start a counted task (``start``: units already done, e.g. by a resumed run);
        returns a :class:`Task`."""
        return Task(self, label, total, unit, start)

    def message(self, text):
        """A line of its own (shown and logged), e.g. what is about to run."""
        self._line(text, log=True, stream=True)

    def _line(self, text, log, stream):
        if stream and self.stream is not None:
            if self._bar_open:
                self._end_bar()
            self.stream.write(text + "\n")
            self.stream.flush()
        if log and self.log_path:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(f"{stamp} {text}\n")

    def _bar(self, task, now):
        width = shutil.get_terminal_size((100, 20)).columns
        frac = task.done / task.total
        status, eta = task._status(now)
        tail = f" {task.done}/{task.total}" + status + f" ETA {format_duration(eta)}"
        head = f"{task.label} "
        n = max(10, min(40, width - len(head) - len(tail) - 3))
        fill = int(round(frac * n))
        text = f"{head}[{'#' * fill}{'.' * (n - fill)}]{tail}"[: max(20, width - 1)]
        self.stream.write("\r" + text.ljust(max(20, width - 1)))
        self.stream.flush()
        self._bar_open = True

    def _end_bar(self):
        if self._bar_open and self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()
        self._bar_open = False

    def close(self):
        """End an open bar line."""
        self._end_bar()
