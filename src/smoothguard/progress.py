"""Progress of long loops: a tqdm bar on a terminal, periodic plain lines on stderr otherwise.

A bar drawn with carriage returns is unreadable in a log file, and tqdm's own ``disable=None`` shows
nothing at all when stderr is not a terminal (batch jobs, CI, ``nohup``), so a run of hours looks dead.
Off a terminal, ``Progress`` prints one line when it starts, then at most one every ``interval``
seconds, then a final one::

    [eval pope] 0/8910 items
    [eval pope] 120/8910 items, 3.1 items/s, eta 47 min
    [eval pope] done: 8910/8910 items in 48 min, 3.1 items/s

``interval`` defaults to the environment variable ``SMOOTHGUARD_PROGRESS_INTERVAL`` (seconds) or 30.
Layer 0: the standard library only, and tqdm, imported when a bar is drawn.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

#: Seconds between two plain lines when neither ``interval`` nor the environment says otherwise.
DEFAULT_INTERVAL = 30.0
INTERVAL_ENV = "SMOOTHGUARD_PROGRESS_INTERVAL"

T = TypeVar("T")


def default_interval() -> float:
    """``SMOOTHGUARD_PROGRESS_INTERVAL`` if it is a number >= 0, else ``DEFAULT_INTERVAL``."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 else DEFAULT_INTERVAL


def format_duration(seconds: float) -> str:
    """``"12 s"``, ``"1 min 20 s"``, ``"47 min"``, ``"2 h 05 min"``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Progress of ``total`` units of work (``None``: unknown), counted with ``update(n)``.

    ``enabled``: ``False`` shows nothing; ``True`` or ``None`` shows a tqdm bar when ``stream``
    (default: ``sys.stderr`` at construction) is a terminal and plain lines otherwise. ``initial``:
    units already done (a resumed run); rates count only this run's. ``leave``: keep the bar when
    done (terminal only; the final plain line is always printed). ``postfix`` (``set_postfix``) is
    appended to each line, e.g. the attack's loss. Usable as a context manager, or by iterating
    (``Progress(iterable=items)``), which counts one unit per element and closes at the end.
    """

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        unit: str = "item",
        *,
        iterable: Iterable[Any] | None = None,
        enabled: bool | None = True,
        interval: float | None = None,
        initial: int = 0,
        leave: bool = True,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.iterable = iterable
        self.n = self.initial = initial
        self.interval = default_interval() if interval is None else interval
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.postfix: dict[str, Any] = {}
        self.closed = enabled is False
        self._bar: Any = None
        if self.closed:
            return
        if _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=self.stream)
            return
        self.started = self.last = clock()
        self._line(self._counts())

    # ------------------------------------------------------------------ counting
    def update(self, n: int = 1) -> None:
        if self.closed:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self.clock()
        if now - self.last >= self.interval and (self.total is None or self.n < self.total):
            self.last = now
            self._line(self._status(now))

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the counts, e.g. ``set_postfix(loss="0.1234")``."""
        self.postfix = values
        if self._bar is not None and not self.closed:
            self._bar.set_postfix(**values)

    def close(self) -> None:
        """The final line (or the bar's end). Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
            return
        elapsed = self.clock() - self.started
        if self.total is None or self.n >= self.total:
            head = f"done: {self._counts()} in {format_duration(elapsed)}"
        else:
            head = f"stopped at {self._counts()} after {format_duration(elapsed)}"
        self._line(head + self._rate(elapsed) + self._extra())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("Progress(iterable=...) is needed to iterate")
        try:
            for element in self.iterable:
                yield element
                self.update(1)
        finally:
            self.close()

    # ------------------------------------------------------------------ lines
    def _counts(self) -> str:
        unit = _plural(self.unit)
        return f"{self.n}/{self.total} {unit}" if self.total is not None else f"{self.n} {unit}"

    def _rate(self, elapsed: float) -> str:
        done = self.n - self.initial
        if elapsed <= 0 or done <= 0:
            return ""
        rate = done / elapsed
        if rate < 0.1:
            return f", {1 / rate:.0f} s/{self.unit}"
        return f", {rate:.{2 if rate < 1 else 1 if rate < 100 else 0}f} {_plural(self.unit)}/s"

    def _status(self, now: float) -> str:
        elapsed = now - self.started
        status = self._counts() + self._rate(elapsed)
        done = self.n - self.initial
        if self.total is not None and done > 0 and elapsed > 0:
            status += f", eta {format_duration((self.total - self.n) * elapsed / done)}"
        return status + self._extra()

    def _extra(self) -> str:
        return "".join(f", {key} {value}" for key, value in self.postfix.items())

    def _line(self, text: str) -> None:
        prefix = f"[{self.desc}] " if self.desc else ""
        with contextlib.suppress(OSError, ValueError):  # stderr closed or gone: never worth a crash
            print(prefix + text, file=self.stream, flush=True)


def track(
    iterable: Iterable[T],
    desc: str = "",
    unit: str = "item",
    *,
    enabled: bool | None = True,
    interval: float | None = None,
    leave: bool = True,
) -> Iterator[T]:
    """``for x in track(items, "certify"):``: ``Progress`` over an iterable (closed when it ends)."""
    return iter(Progress(iterable=iterable, desc=desc, unit=unit, enabled=enabled, interval=interval, leave=leave))


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
