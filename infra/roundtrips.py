"""Counting the round trips one unit of work costs: Firestore, Storage and Pub/Sub calls.

The edges (``infra.jobs``, ``infra.blobs``, ``infra.bus``) note each call they make in the counter
of the current context; a function invocation or a worker's attempt opens one with
:func:`counting` and logs the totals with the job id, which is how ``bench/throughput.py`` adds up
what a job costs from created to succeeded. A thread starts with an empty context, so a thread
that works for an attempt (the lease heartbeat) attaches the attempt's counter explicitly.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_current: ContextVar[Counter[str] | None] = ContextVar("roundtrips", default=None)
_stages: ContextVar[dict[str, float] | None] = ContextVar("stages", default=None)


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
    """``firestore=5 storage=2 pubsub=1``, for a log line a benchmark can read; ``beats=N`` after
    them when an attempt renewed its lease or wrote progress (N of its Firestore calls were those)."""
    out = " ".join(f"{k}={counter[k]}" for k in ("firestore", "storage", "pubsub"))
    return out + (f" beats={counter['beats']}" if counter["beats"] else "")


_LOGGED = re.compile(r"job (\S+) round trips: ((?:\w+=\d+ ?)+)")


def from_logs(lines: Iterable[str], job_ids: set[str]) -> dict[str, Counter[str]]:
    """Each job's round trips, summed over the log lines of :func:`summary` that name it (the
    functions' and the GPU service's: what the job cost from created to its end)."""
    per_job: dict[str, Counter[str]] = {job_id: Counter() for job_id in job_ids}
    for line in lines:
        m = _LOGGED.search(line)
        if m and m[1] in per_job:
            for pair in m[2].split():
                service, _, value = pair.partition("=")
                per_job[m[1]][service] += int(value)
    return per_job


@contextmanager
def timing() -> Iterator[dict[str, float]]:
    """Collect the seconds spent in each :func:`stage` of this context (a profile of one job)."""
    stages: dict[str, float] = {}
    token = _stages.set(stages)
    try:
        yield stages
    finally:
        _stages.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time a step of the current unit of work (a no-op outside :func:`timing`)."""
    stages = _stages.get()
    started = time.perf_counter()
    try:
        yield
    finally:
        if stages is not None:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - started


def stages_summary(stages: dict[str, float], started: float) -> str:
    """``start=1733079600.123 validate=0.012 admit=0.020``: when the unit began (epoch seconds)
    and each stage's seconds, for a log line a benchmark can read."""
    return " ".join([f"start={started:.3f}", *(f"{k}={v:.4f}" for k, v in stages.items())])
