"""Firestore edge: the job document's life cycle, one compare-and-set per state change.

Every write that changes ``status`` goes through :meth:`JobStore.transition` or one of the lease
methods, which read the current document, decide, and write only if the document is unchanged
since the read (an update-time precondition), refusing transitions that
``infra.contract.TRANSITIONS`` does not allow. That is what keeps a job ending exactly once when
Pub/Sub delivers a message twice, or when a worker that lost its lease wakes up.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore

from infra.contract import (
    ErrorInfo,
    JobDoc,
    JobStatus,
    PartState,
    Prepared,
    Progress,
    Timings,
    can_transition,
)
from infra.settings import Settings
from pipelines.errors import RetryableError

log = logging.getLogger(__name__)

T = TypeVar("T")
CAS_ATTEMPTS = 50

SERVER_TIME = firestore.SERVER_TIMESTAMP
DELETE = firestore.DELETE_FIELD


def firestore_client(settings: Settings) -> firestore.Client:
    # The client library honours FIRESTORE_EMULATOR_HOST itself.
    return firestore.Client(project=settings.google_cloud_project)


def utcnow() -> datetime:
    return datetime.now(UTC)


class LeaseLost(Exception):
    """This worker no longer owns the job: another attempt took over, or the job ended."""


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"
    NOT_FOUND = "not_found"
    FINAL = "final"  # already succeeded/failed/rejected/cancelled: a duplicate delivery
    RUNNING_ELSEWHERE = "running_elsewhere"  # another worker holds a live lease
    CANCELLED = "cancelled"  # cancel requested before it started: ended now
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"  # ended as failed now
    FANNED_OUT = "fanned_out"  # a multi-part job already prepared: its parts are running


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: JobDoc | None = None
    attempt: int = 0


class _Writes:
    """Collects the one update a decision makes, for :meth:`JobStore._cas`."""

    def __init__(self) -> None:
        self.data: dict[str, Any] | None = None

    def update(self, _ref: Any, data: dict[str, Any]) -> None:
        self.data = data


class JobStore:
    def __init__(self, client: firestore.Client, collection: str = "jobs") -> None:
        self._db = client
        self._collection = collection

    def _cas(self, ref: firestore.DocumentReference, decide: Callable[[_Writes, Any], T]) -> T:
        """Read the document, decide, and write only if it has not changed since: compare-and-set.

        Every state change goes through here. It is a transaction without locks: on a hot
        document (the parts of one job) lock-based transactions stall each other, while a failed
        precondition just means "someone wrote first: read again and decide again".

        Raises:
            RetryableError: the document kept changing under us (it never settles).
        """
        for attempt in range(CAS_ATTEMPTS):
            snap = ref.get()
            writes = _Writes()
            result = decide(writes, snap)
            if writes.data is None:
                return result
            try:
                if snap.exists:
                    ref.update(writes.data, option=self._db.write_option(last_update_time=snap.update_time))
                else:
                    ref.create(writes.data)
                return result
            except (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.Aborted):
                time.sleep(random.uniform(0, 0.01 * (attempt + 1)))
        raise RetryableError(f"job {ref.id} kept changing; try again", code="contention")

    def ref(self, job_id: str) -> firestore.DocumentReference:
        return self._db.collection(self._collection).document(job_id)

    # -- reads ----------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobDoc | None:
        snap = self.ref(job_id).get()
        return JobDoc.model_validate(snap.to_dict()) if snap.exists else None

    def find(self, statuses: Iterable[JobStatus]) -> list[tuple[str, JobDoc]]:
        query = self._db.collection(self._collection).where(
            filter=firestore.FieldFilter("status", "in", [s.value for s in statuses])
        )
        found = []
        for snap in query.stream():
            job = JobDoc.model_validate(snap.to_dict())
            if job.updated_at is None:  # a client-created job: the document's own update time
                job.updated_at = snap.update_time
            found.append((snap.id, job))
        return found

    # -- creation -------------------------------------------------------------------------------

    def create(self, job_id: str, job: JobDoc) -> bool:
        """Create-only write. Returns False if ``jobs/{job_id}`` already exists."""
        data = job.to_firestore()
        data.setdefault("createdAt", SERVER_TIME)
        data["updatedAt"] = SERVER_TIME
        try:
            self.ref(job_id).create(data)
        except gexc.AlreadyExists:
            return False
        return True

    # -- transitions ----------------------------------------------------------------------------

    def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        allowed_from: Iterable[JobStatus] | None = None,
        updates: dict[str, Any] | None = None,
    ) -> JobDoc | None:
        """Move the job to ``to`` if its current state allows it; returns the job as it was.

        Returns ``None`` (and writes nothing) if the job does not exist or its state does not
        allow the move, which callers treat as "someone else already did it".
        """
        allowed = set(allowed_from) if allowed_from is not None else None
        ref = self.ref(job_id)

        def run(txn: _Writes, snap: Any) -> JobDoc | None:
            if not snap.exists:
                return None
            job = JobDoc.model_validate(snap.to_dict())
            current = job.effective_status
            if (allowed is not None and current not in allowed) or not can_transition(current, to):
                return None
            data: dict[str, Any] = {"status": to.value, "updatedAt": SERVER_TIME, **(updates or {})}
            if to.is_final:
                data.setdefault("finishedAt", SERVER_TIME)
                data["lease"] = DELETE
            txn.update(ref, data)
            return job

        return self._cas(ref, run)

    def end(self, job_id: str, to: JobStatus, error: ErrorInfo | None = None, **updates: Any) -> bool:
        """End a job that is not running (rejected at validation, failed by a sweeper, ...)."""
        data = dict(updates)
        if error is not None:
            data["error"] = error.to_firestore()
        return self.transition(job_id, to, updates=data) is not None

    # -- the worker's lease ---------------------------------------------------------------------

    def claim(self, job_id: str, owner: str, lease_seconds: float, max_attempts: int) -> Claim:
        """Take the job for one attempt, atomically. Only the returned attempt may commit."""
        ref = self.ref(job_id)

        def run(txn: _Writes, snap: Any) -> Claim:
            if not snap.exists:
                return Claim(ClaimOutcome.NOT_FOUND)
            job = JobDoc.model_validate(snap.to_dict())
            status = job.effective_status
            now = utcnow()
            if status.is_final:
                return Claim(ClaimOutcome.FINAL, job, job.attempt)
            if job.cancel_requested:
                txn.update(ref, _final_fields(JobStatus.CANCELLED))
                return Claim(ClaimOutcome.CANCELLED, job, job.attempt)
            if job.parts:
                return Claim(ClaimOutcome.FANNED_OUT, job, job.attempt)
            if status is JobStatus.RUNNING and job.lease and job.lease.expires_at > now:
                return Claim(ClaimOutcome.RUNNING_ELSEWHERE, job, job.attempt)
            if job.attempt >= max_attempts:
                error = ErrorInfo.attempts_exhausted(job.attempt, job.last_error)
                txn.update(ref, {**_final_fields(JobStatus.FAILED), "error": error.to_firestore()})
                return Claim(ClaimOutcome.ATTEMPTS_EXHAUSTED, job, job.attempt)
            attempt = job.attempt + 1
            data: dict[str, Any] = {
                "status": JobStatus.RUNNING.value,
                "attempt": attempt,
                "lease": {"owner": owner, "expiresAt": now + timedelta(seconds=lease_seconds)},
                "progress": Progress(fraction=0.0, stage="starting").to_firestore()
                | {"updatedAt": SERVER_TIME},
                "updatedAt": SERVER_TIME,
            }
            if job.started_at is None:
                data["startedAt"] = SERVER_TIME
            txn.update(ref, data)
            return Claim(ClaimOutcome.CLAIMED, job, attempt)

        return self._cas(ref, run)

    def heartbeat(
        self,
        job_id: str,
        owner: str,
        attempt: int,
        lease_seconds: float,
        progress: Progress | None = None,
    ) -> bool:
        """Renew the lease (and write progress). Returns ``cancelRequested``.

        Raises:
            LeaseLost: the job is no longer this worker's attempt.
        """
        ref = self.ref(job_id)

        def run(txn: _Writes, snap: Any) -> bool:
            job = self._owned(snap, owner, attempt)
            data: dict[str, Any] = {
                "lease.expiresAt": utcnow() + timedelta(seconds=lease_seconds),
                "updatedAt": SERVER_TIME,
            }
            if progress is not None:
                data["progress"] = progress.to_firestore() | {"updatedAt": SERVER_TIME}
            txn.update(ref, data)
            return job.cancel_requested

        return self._cas(ref, run)

    def finish(self, job_id: str, owner: str, attempt: int, to: JobStatus, updates: dict[str, Any]) -> None:
        """End (or re-queue) this worker's attempt. Only the lease owner can do this.

        Raises:
            LeaseLost: another attempt owns the job now, or it already ended.
        """
        if not can_transition(JobStatus.RUNNING, to):
            raise ValueError(f"a running job cannot become {to}")
        ref = self.ref(job_id)

        def run(txn: _Writes, snap: Any) -> None:
            self._owned(snap, owner, attempt)
            if to is JobStatus.QUEUED:
                data = {"status": to.value, "lease": DELETE, "updatedAt": SERVER_TIME}
            else:
                data = _final_fields(to)
            txn.update(ref, {**data, **updates})

        self._cas(ref, run)

    def recover_expired(self, job_id: str, max_attempts: int) -> JobStatus | None:
        """For the sweeper: a running job whose lease expired goes back to the queue (or fails
        when its attempts are spent). Returns the new state, or ``None`` if it was not stuck."""
        ref = self.ref(job_id)

        def run(txn: _Writes, snap: Any) -> JobStatus | None:
            if not snap.exists:
                return None
            job = JobDoc.model_validate(snap.to_dict())
            if job.status is not JobStatus.RUNNING or (job.lease and job.lease.expires_at > utcnow()):
                return None
            owner = job.lease.owner if job.lease else "unknown"
            lost = ErrorInfo(
                code="worker_lost",
                message=f"the worker running attempt {job.attempt} ({owner}) stopped renewing its lease",
                retryable=True,
            )
            if job.cancel_requested:
                txn.update(ref, _final_fields(JobStatus.CANCELLED))
                return JobStatus.CANCELLED
            if job.attempt >= max_attempts:
                error = lost.model_copy(
                    update={
                        "retryable": False,
                        "message": f"{lost.message}; gave up after {job.attempt} attempts",
                    }
                )
                txn.update(ref, {**_final_fields(JobStatus.FAILED), "error": error.to_firestore()})
                return JobStatus.FAILED
            txn.update(
                ref,
                {
                    "status": JobStatus.QUEUED.value,
                    "lease": DELETE,
                    "lastError": lost.to_firestore(),
                    "updatedAt": SERVER_TIME,
                },
            )
            return JobStatus.QUEUED

        return self._cas(ref, run)

    # -- multi-part jobs -------------------------------------------------------------------------

    def fan_out(
        self,
        job_id: str,
        owner: str,
        attempt: int,
        prepared: Prepared,
        parts: Iterable[str],
        progress: Progress,
        timings: Timings,
    ) -> None:
        """The prepare step's commit: record what it made and queue every part (job stays running).

        Raises:
            LeaseLost: another attempt owns the job now, or it already ended.
        """
        ref = self.ref(job_id)

        def run(txn: _Writes, snap: Any) -> None:
            self._owned(snap, owner, attempt)
            txn.update(
                ref,
                {
                    "prepared": prepared.to_firestore(),
                    "parts": {p: PartState(status=JobStatus.QUEUED).to_firestore() for p in parts},
                    "lease": DELETE,
                    "progress": progress.to_firestore() | {"updatedAt": SERVER_TIME},
                    "timings": timings.to_firestore(),
                    "updatedAt": SERVER_TIME,
                },
            )

        self._cas(ref, run)

    def claim_part(
        self, job_id: str, part: str, owner: str, lease_seconds: float, max_attempts: int
    ) -> Claim:
        """Take one part of a fanned-out job for one attempt. Only that attempt may commit it."""
        ref = self.ref(job_id)

        def run(txn: _Writes, snap: Any) -> Claim:
            if not snap.exists:
                return Claim(ClaimOutcome.NOT_FOUND)
            job = JobDoc.model_validate(snap.to_dict())
            state = (job.parts or {}).get(part)
            if job.effective_status.is_final or state is None or state.status.is_final:
                return Claim(
                    ClaimOutcome.FINAL if state or job.effective_status.is_final else ClaimOutcome.NOT_FOUND,
                    job,
                )
            now = utcnow()
            if state.status is JobStatus.RUNNING and state.lease and state.lease.expires_at > now:
                return Claim(ClaimOutcome.RUNNING_ELSEWHERE, job, state.attempt)
            if job.cancel_requested or state.attempt >= max_attempts:
                return Claim(
                    ClaimOutcome.CANCELLED if job.cancel_requested else ClaimOutcome.ATTEMPTS_EXHAUSTED,
                    job,
                    state.attempt,
                )
            attempt = state.attempt + 1
            txn.update(
                ref,
                {
                    f"parts.{part}.status": JobStatus.RUNNING.value,
                    f"parts.{part}.attempt": attempt,
                    f"parts.{part}.lease": {
                        "owner": owner,
                        "expiresAt": now + timedelta(seconds=lease_seconds),
                    },
                    "updatedAt": SERVER_TIME,
                },
            )
            return Claim(ClaimOutcome.CLAIMED, job, attempt)

        return self._cas(ref, run)

    def heartbeat_part(
        self,
        job_id: str,
        part: str,
        owner: str,
        attempt: int,
        lease_seconds: float,
        progress: Progress | None,
        prepare_weight: float,
    ) -> bool:
        """Renew a part's lease and write its progress (and the job's overall progress).

        Raises:
            LeaseLost: this worker no longer holds this attempt of the part.
        """
        ref = self.ref(job_id)

        def run(txn: _Writes, snap: Any) -> bool:
            job = self._owned_part(snap, part, owner, attempt)
            data: dict[str, Any] = {
                f"parts.{part}.lease.expiresAt": utcnow() + timedelta(seconds=lease_seconds),
                "updatedAt": SERVER_TIME,
            }
            if progress is not None:
                data[f"parts.{part}.progress"] = progress.to_firestore()
                parts = dict(job.parts or {})
                parts[part] = parts[part].model_copy(update={"progress": progress})
                data["progress"] = overall_progress(parts, prepare_weight).to_firestore() | {
                    "updatedAt": SERVER_TIME
                }
            txn.update(ref, data)
            return job.cancel_requested

        return self._cas(ref, run)

    def finish_part(
        self,
        job_id: str,
        part: str,
        owner: str | None,
        attempt: int,
        state: PartState,
        join: Callable[[JobDoc], tuple[JobStatus, dict[str, Any]]],
    ) -> JobStatus | None:
        """Record a part's end (or its return to the queue); when it was the last part to end,
        call ``join(job)`` and end the job with what it returns, in the same atomic write, so the
        job ends exactly once however the parts race. Returns the job's final state, if it ended.

        ``owner=None`` is the sweeper or a claim ending a part that no worker holds.

        Raises:
            LeaseLost: ``owner`` no longer holds this attempt of the part.
        """
        ref = self.ref(job_id)

        def run(txn: _Writes, snap: Any) -> JobStatus | None:
            if owner is not None:
                job = self._owned_part(snap, part, owner, attempt)
            else:
                if not snap.exists:
                    return None
                job = JobDoc.model_validate(snap.to_dict())
                current = (job.parts or {}).get(part)
                if job.effective_status.is_final or current is None or current.status.is_final:
                    return None
            data: dict[str, Any] = {f"parts.{part}": state.to_firestore(), "updatedAt": SERVER_TIME}
            parts = dict(job.parts or {})
            parts[part] = state
            if all(p.status.is_final for p in parts.values()):
                status, fields = join(job.model_copy(update={"parts": parts}))
                data.update(_final_fields(status))
                data.update(fields)
                txn.update(ref, data)
                return status
            txn.update(ref, data)
            return None

        return self._cas(ref, run)

    @staticmethod
    def _owned_part(snap: Any, part: str, owner: str, attempt: int) -> JobDoc:
        if not snap.exists:
            raise LeaseLost("the job document is gone")
        job = JobDoc.model_validate(snap.to_dict())
        state = (job.parts or {}).get(part)
        if job.effective_status.is_final or state is None:
            raise LeaseLost(f"job is {job.status}")
        if state.status is not JobStatus.RUNNING or state.attempt != attempt or not state.lease:
            raise LeaseLost(
                f"part {part} is {state.status} at attempt {state.attempt}, not running attempt {attempt}"
            )
        if state.lease.owner != owner:
            raise LeaseLost(f"part {part}'s lease is held by {state.lease.owner}")
        return job

    def recover_expired_part(self, job_id: str, part: str) -> bool:
        """For the sweeper: a running part whose lease expired goes back to ``queued``.
        (The next claim fails it if its attempts are spent.) Returns whether it was stuck."""
        ref = self.ref(job_id)

        def run(txn: _Writes, snap: Any) -> bool:
            if not snap.exists:
                return False
            job = JobDoc.model_validate(snap.to_dict())
            state = (job.parts or {}).get(part)
            if job.effective_status.is_final or state is None or state.status is not JobStatus.RUNNING:
                return False
            if state.lease and state.lease.expires_at > utcnow():
                return False
            owner = state.lease.owner if state.lease else "unknown"
            lost = ErrorInfo(
                code="worker_lost",
                message=f"the worker running attempt {state.attempt} ({owner}) stopped renewing its lease",
                retryable=True,
                part=part,
            )
            txn.update(
                ref,
                {
                    f"parts.{part}.status": JobStatus.QUEUED.value,
                    f"parts.{part}.lease": DELETE,
                    f"parts.{part}.error": lost.to_firestore(),
                    "updatedAt": SERVER_TIME,
                },
            )
            return True

        return self._cas(ref, run)

    def touch(self, job_id: str) -> None:
        self.ref(job_id).update({"updatedAt": SERVER_TIME})

    @staticmethod
    def _owned(snap: Any, owner: str, attempt: int) -> JobDoc:
        if not snap.exists:
            raise LeaseLost("the job document is gone")
        job = JobDoc.model_validate(snap.to_dict())
        if job.status is not JobStatus.RUNNING or job.attempt != attempt or not job.lease:
            raise LeaseLost(f"job is {job.status} at attempt {job.attempt}, not running attempt {attempt}")
        if job.lease.owner != owner:
            raise LeaseLost(f"lease is held by {job.lease.owner}")
        return job


def overall_progress(parts: dict[str, PartState], prepare_weight: float) -> Progress:
    """A multi-part job's progress: the prepare step's share, then the mean of its parts."""
    fractions = [
        1.0 if p.status.is_final else (p.progress.fraction if p.progress else 0.0) for p in parts.values()
    ]
    mean = sum(fractions) / len(fractions) if fractions else 1.0
    running = [name for name, p in parts.items() if not p.status.is_final]
    stage = ("parts: " + ", ".join(running)) if running else "joining"
    return Progress(fraction=prepare_weight + (1 - prepare_weight) * mean, stage=stage[:64])


def _final_fields(status: JobStatus) -> dict[str, Any]:
    return {"status": status.value, "finishedAt": SERVER_TIME, "updatedAt": SERVER_TIME, "lease": DELETE}
