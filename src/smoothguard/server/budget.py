"""The time budget of one request to a local model: HF's ``max_time`` stopping rule, observed.

``generate(max_time=S)`` makes transformers add ``MaxTimeCriteria(S)``, timed from that one call and
silent about whether it stopped anything. A request may make several ``generate`` calls (``batch_size``
chunks, adaptive rounds), so :class:`TimeBudget` is that same criterion with the request's own start,
passed as ``stopping_criteria`` to every call of the request, and it records whether it cut generation.
Imported only where a local model generates (it imports transformers).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import MaxTimeCriteria, StoppingCriteriaList


class TimeBudget(MaxTimeCriteria):
    """Stop generating ``seconds`` after ``started`` (``time.time()``: now); ``exceeded`` once it did."""

    def __init__(self, seconds: float, started: float | None = None) -> None:
        super().__init__(max_time=seconds, initial_timestamp=time.time() if started is None else started)
        self.exceeded = False

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        done = super().__call__(input_ids, scores, **kwargs)
        if bool(done.any()):
            self.exceeded = True
        return done

    def generate_kwargs(self) -> dict[str, Any]:
        """What to pass to the guard's ``generate_batch`` (and so to every HF ``generate`` call)."""
        return {"stopping_criteria": StoppingCriteriaList([self])}
