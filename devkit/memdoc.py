"""An in-memory job document that applies lifecycle decisions the way Firestore applies updates.

It lets the unit tier replay races (two deliveries, a zombie worker, the sweeper) in
microseconds: each step reads the document, decides with a pure function from
:mod:`core.lifecycle`, and applies the patch, as ``infra.jobs.JobStore`` does against Firestore.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from core.contract import JobDoc, read_job
from core.lifecycle import Decision
from core.patch import DELETE, SERVER_TIME, Patch

T = TypeVar("T")


def _resolve(value: Any, now: datetime) -> Any:
    if value is SERVER_TIME:
        return now
    if isinstance(value, dict):
        return {k: _resolve(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, now) for v in value]
    return value


def apply(data: dict[str, Any], patch: Patch, now: datetime) -> dict[str, Any]:
    """``data`` after a Firestore ``update(patch)``: dotted paths, DELETE, SERVER_TIME."""
    out = copy.deepcopy(data)
    for path, value in patch.to_dict().items():
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = _resolve(value, now)
    return out


class MemDoc:
    """One job document plus a clock; :meth:`do` runs a decision against it."""

    def __init__(self, data: dict[str, Any] | None, now: datetime | None = None) -> None:
        self.data = data
        self.now = now or datetime(2026, 1, 1, tzinfo=UTC)
        self.writes = 0

    @property
    def job(self) -> JobDoc | None:
        return read_job(self.data) if self.data is not None else None

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def read(self) -> JobDoc | None:
        return self.job

    def do(self, decide: Callable[[JobDoc | None], Decision[T]]) -> T:
        decision = decide(self.job)
        if decision.patch:
            assert self.data is not None, "a decision wrote to a missing document"
            self.data = apply(self.data, decision.patch, self.now)
            self.writes += 1
        return decision.result

    def commit(self, decision: Decision[T]) -> T:
        """Apply a decision made earlier (from a stale read): what a failed precondition prevents."""
        if decision.patch:
            assert self.data is not None
            self.data = apply(self.data, decision.patch, self.now)
            self.writes += 1
        return decision.result
