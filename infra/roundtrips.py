"""Counting the round trips one unit of work costs: Firestore, Storage and Pub/Sub calls.

The edges (``infra.jobs``, ``infra.blobs``, ``infra.bus``) note each call they make in the counter
of the current context; a function invocation or a worker's attempt opens one with
:func:`counting` and logs the totals with the job id, which is how ``bench/throughput.py`` adds up
what a job costs from created to succeeded. A thread starts with an empty context, so a thread
that works for an attempt (the lease heartbeat) attaches the attempt's counter explicitly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_current: ContextVar[Counter[str] | None] = ContextVar("roundtrips", default=None)


def note(service: str, n: int = 1) -> None:
    counter = _current.get()
    if counter is not None:
        counter[service] += n


@contextmanager
def counting(counter: Counter[str] | None = None) -> Iterator[Counter[str]]:
    """Count the round trips made in this context (into ``counter``, or a new one)."""
    counter = Counter() if counter is None else counter
    token = _current.set(counter)
    try:
        yield counter
    finally:
        _current.reset(token)


def summary(counter: Counter[str]) -> str:
    """``firestore=5 storage=2 pubsub=1``, for a log line a benchmark can read."""
    return " ".join(f"{k}={counter[k]}" for k in ("firestore", "storage", "pubsub"))
