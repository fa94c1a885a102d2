"""Batches of concurrent requests: a bounded wait for batch-mates, then one call for all of them.

``Batcher(run, window=..., max_items=...)``; ``batcher.submit(group, item)`` queues ``item`` under
``group`` (a hashable of the settings its batch-mates must share) and returns a ``Future``. One worker
thread calls ``run(group, items)`` for one batch at a time; ``run`` returns one outcome per item, in
order. A batch is the pending items of one group, at most ``max_items`` of them, in arrival order,
taken from the group that is due first:

- at once when a group has ``max_items`` pending (full groups go first, the one whose oldest item came
  first before the others);
- else when ``window`` seconds have passed without a new item joining the group, counted from the
  moment the model became free when that is later (so that the requests a batch answered, which come
  back together under load, can join the requests that waited for it);
- and never more than ``max_items`` windows after the group's oldest item (or the free model) was
  ready: a request waits at most ``max_items * window`` for batch-mates, on top of the batches ahead.

A lone request on an idle server waits one ``window``; with ``max_items`` 1 items are answered one at a
time in arrival order, with no wait at all.

Errors stay per item: when ``run`` raises for a batch of several items, each item is run again alone
(in arrival order), so that one item that makes its batch fail (a poisoned input) fails alone and its
batch-mates get their own answers; ``run`` raising for an item alone is that item's error.

The worker starts with the first item and stops after ``idle`` seconds without any (the next item
starts a new one), so an unused batcher holds no thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from smoothguard.errors import ConfigError, check_int

#: Seconds an idle worker thread waits for an item before it stops.
IDLE_SECONDS = 5.0


@dataclass
class _Pending:
    item: Any
    arrived: float
    future: Future = field(default_factory=Future)


class Batcher:
    """Runs queued items in batches of one group through ``run(group, items) -> outcomes``, one batch at a time."""

    def __init__(
        self,
        run: Callable[[Hashable, list[Any]], Sequence[Any]],
        *,
        window: float,
        max_items: int,
        idle: float = IDLE_SECONDS,
        name: str = "smoothguard-batcher",
    ) -> None:
        check_int("max_items", max_items, minimum=1)
        if not window >= 0:  # also refuses NaN
            raise ConfigError(f"window must be >= 0 seconds, got {window!r}")
        self.window = float(window)
        self.max_items = max_items
        self.idle = idle
        self.name = name
        self._run = run
        self._pending: dict[Hashable, list[_Pending]] = {}
        self._changed = threading.Condition()
        self._worker: threading.Thread | None = None
        self._free_since = 0.0  # monotonic time the last batch ended

    def submit(self, group: Hashable, item: Any) -> Future:
        """Queue ``item`` with the others of ``group``; the future holds its outcome (or its exception)."""
        pending = _Pending(item, time.monotonic())
        with self._changed:
            self._pending.setdefault(group, []).append(pending)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._worker.start()
            self._changed.notify()
        return pending.future

    def pending(self) -> int:
        """How many items wait for a batch (not counting the batch that runs)."""
        with self._changed:
            return sum(len(items) for items in self._pending.values())

    # ------------------------------------------------------------------ internal
    def _work(self) -> None:
        while True:
            with self._changed:
                batch = self._next()
            if batch is None:
                return
            group, taken = batch
            answers = self._answer(group, [p.item for p in taken])
            with self._changed:
                self._free_since = time.monotonic()
            for pending, (outcome, failed) in zip(taken, answers, strict=True):
                if failed:
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(outcome)

    def _next(self) -> tuple[Hashable, list[_Pending]] | None:
        """The next batch, waited for under the lock; ``None`` (and the worker gone) after ``idle`` seconds
        with nothing pending."""
        while True:
            if not self._pending:
                self._changed.wait(self.idle)
                if not self._pending:
                    self._worker = None
                    return None
                continue
            full = [group for group, items in self._pending.items() if len(items) >= self.max_items]
            if full:
                group = min(full, key=lambda g: self._pending[g][0].arrived)
            else:
                group = min(self._pending, key=lambda g: self._due(self._pending[g]))
            items = self._pending[group]
            wait = self._due(items) - time.monotonic()
            if full or wait <= 0:
                taken, rest = items[: self.max_items], items[self.max_items :]
                if rest:
                    self._pending[group] = rest
                else:
                    del self._pending[group]
                return group, taken
            self._changed.wait(wait)

    def _due(self, items: list[_Pending]) -> float:
        """When a group's batch closes (not full): ``window`` after its newest item joined, or after the
        model became free if that was later; at most ``max_items`` windows after its oldest item (or the
        model) was ready."""
        start = max(items[0].arrived, self._free_since)
        last = max(items[-1].arrived, self._free_since)
        return min(last + self.window, start + self.window * self.max_items)

    def _answer(self, group: Hashable, items: list[Any]) -> list[tuple[Any, bool]]:
        """(outcome, False) or (exception, True) per item: the batch, else each item alone."""
        try:
            outcomes = list(self._run(group, items))
        except Exception as exc:
            if len(items) == 1:
                return [(exc, True)]
            return [self._answer(group, [item])[0] for item in items]
        except BaseException as exc:  # e.g. KeyboardInterrupt: fail the batch, keep the worker serving
            return [(exc, True) for _ in items]
        if len(outcomes) != len(items):
            error = RuntimeError(f"a batch of {len(items)} items got {len(outcomes)} outcomes")
            return [(error, True) for _ in items]
        return [(outcome, False) for outcome in outcomes]
