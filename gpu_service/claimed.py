"""What this process did to the jobs it claimed, so that their redeliveries cost no doomed calls.

A job's message carries its queueing write (:class:`core.contract.QueuedCopy`), so that a claim
can write against it without reading the job first. Once this process has claimed the job, that
copy is out of date (the claim wrote since): a write against it could only fail, and the claim
would then read. So a delivery of a job this process claimed reads first.

And once this process has ended the job, a redelivery of the very message its claim started from
(the same queueing write, to the nanosecond) can only find the job final: final states are
terminal, and a job deleted and created again is queued by a new write. That redelivery is
acked as a duplicate without any call. This is what a burst does: the redriver runs queued jobs
straight from Firestore while their messages wait in Pub/Sub's backoff, and each message then
arrives for a job that has ended.
"""

from __future__ import annotations

import threading
from typing import Any

from core.contract import QueuedCopy

#: how many jobs a process remembers (the oldest are forgotten first)
REMEMBERED = 10_000


class Claimed:
    """The jobs this process claimed, each with the write its claim was decided on and whether
    this process then ended it. Shared by every consumer thread."""

    def __init__(self, limit: int = REMEMBERED) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[str | None, bool]] = {}

    def claimed(self, job_id: str, decided_on: Any) -> None:
        """This process claimed ``job_id``, deciding on the document as the write at
        ``decided_on`` (its update time) had left it."""
        rfc3339 = getattr(decided_on, "rfc3339", None)
        stamp = rfc3339() if callable(rfc3339) else None
        with self._lock:
            self._jobs.pop(job_id, None)
            self._jobs[job_id] = (stamp, False)
            while len(self._jobs) > self._limit:
                del self._jobs[next(iter(self._jobs))]

    def ended(self, job_id: str) -> None:
        """This process's commit ended ``job_id`` (a final state)."""
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is not None:
                self._jobs[job_id] = (entry[0], True)

    def delivery(self, job_id: str, queued: QueuedCopy | None) -> tuple[bool, QueuedCopy | None]:
        """What a delivery of ``job_id`` carrying ``queued`` needs: whether it is a redelivery of a
        job this process ended (the copy being the write its claim was decided on), and the copy
        a claim may write against (``None`` when this process wrote the job since)."""
        with self._lock:
            entry = self._jobs.get(job_id)
        if entry is None:
            return False, queued
        stamp, ended = entry
        return ended and queued is not None and stamp is not None and queued.update_time == stamp, None
