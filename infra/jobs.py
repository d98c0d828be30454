"""Firestore edge: the job document's life cycle, one transaction per state change.

Every write that changes ``status`` goes through :meth:`JobStore.transition` or one of the lease
methods, which read the current document in a transaction and refuse transitions that
``infra.contract.TRANSITIONS`` does not allow. That is what keeps a job ending exactly once when
Pub/Sub delivers a message twice, or when a worker that lost its lease wakes up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from infra.contract import ErrorInfo, JobDoc, JobStatus, Progress, can_transition
from infra.settings import Settings

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: JobDoc | None = None
    attempt: int = 0


class JobStore:
    def __init__(self, client: firestore.Client, collection: str = "jobs") -> None:
        self._db = client
        self._collection = collection

    def ref(self, job_id: str) -> firestore.DocumentReference:
        return self._db.collection(self._collection).document(job_id)

    # -- reads ----------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobDoc | None:
        snap = self.ref(job_id).get()
        return JobDoc.model_validate(snap.to_dict()) if snap.exists else None

    def list_for_user(self, uid: str, limit: int = 50) -> list[tuple[str, JobDoc]]:
        query = self._db.collection(self._collection).where(filter=firestore.FieldFilter("uid", "==", uid))
        docs = [(s.id, JobDoc.model_validate(s.to_dict())) for s in query.stream()]
        docs.sort(key=lambda d: d[1].created_at or datetime.min.replace(tzinfo=UTC), reverse=True)
        return docs[:limit]

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

        @firestore.transactional
        def run(txn: firestore.Transaction) -> JobDoc | None:
            snap = ref.get(transaction=txn)
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

        result: JobDoc | None = run(self._db.transaction())
        return result

    def end(self, job_id: str, to: JobStatus, error: ErrorInfo | None = None, **updates: Any) -> bool:
        """End a job that is not running (rejected at validation, failed by a sweeper, ...)."""
        data = dict(updates)
        if error is not None:
            data["error"] = error.to_firestore()
        return self.transition(job_id, to, updates=data) is not None

    # -- the worker's lease ---------------------------------------------------------------------

    def claim(self, job_id: str, owner: str, lease_seconds: float, max_attempts: int) -> Claim:
        """Take the job for one attempt, in a transaction. Only the returned attempt may commit."""
        ref = self.ref(job_id)

        @firestore.transactional
        def run(txn: firestore.Transaction) -> Claim:
            snap = ref.get(transaction=txn)
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
            if status is JobStatus.RUNNING and job.lease and job.lease.expires_at > now:
                return Claim(ClaimOutcome.RUNNING_ELSEWHERE, job, job.attempt)
            if job.attempt >= max_attempts:
                last = job.model_extra.get("lastError") if job.model_extra else None
                message = f"gave up after {job.attempt} attempts"
                if isinstance(last, dict) and last.get("message"):
                    message += f"; last error: {last['message']}"
                error = ErrorInfo(code="attempts_exhausted", message=message, retryable=False)
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

        result: Claim = run(self._db.transaction())
        return result

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

        @firestore.transactional
        def run(txn: firestore.Transaction) -> bool:
            job = self._owned(ref.get(transaction=txn), owner, attempt)
            data: dict[str, Any] = {
                "lease.expiresAt": utcnow() + timedelta(seconds=lease_seconds),
                "updatedAt": SERVER_TIME,
            }
            if progress is not None:
                data["progress"] = progress.to_firestore() | {"updatedAt": SERVER_TIME}
            txn.update(ref, data)
            return job.cancel_requested

        result: bool = run(self._db.transaction())
        return result

    def finish(self, job_id: str, owner: str, attempt: int, to: JobStatus, updates: dict[str, Any]) -> None:
        """End (or re-queue) this worker's attempt. Only the lease owner can do this.

        Raises:
            LeaseLost: another attempt owns the job now, or it already ended.
        """
        if not can_transition(JobStatus.RUNNING, to):
            raise ValueError(f"a running job cannot become {to}")
        ref = self.ref(job_id)

        @firestore.transactional
        def run(txn: firestore.Transaction) -> None:
            self._owned(ref.get(transaction=txn), owner, attempt)
            if to is JobStatus.QUEUED:
                data = {"status": to.value, "lease": DELETE, "updatedAt": SERVER_TIME}
            else:
                data = _final_fields(to)
            txn.update(ref, {**data, **updates})

        run(self._db.transaction())

    def recover_expired(self, job_id: str, max_attempts: int) -> JobStatus | None:
        """For the sweeper: a running job whose lease expired goes back to the queue (or fails
        when its attempts are spent). Returns the new state, or ``None`` if it was not stuck."""
        ref = self.ref(job_id)

        @firestore.transactional
        def run(txn: firestore.Transaction) -> JobStatus | None:
            snap = ref.get(transaction=txn)
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

        result: JobStatus | None = run(self._db.transaction())
        return result

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


def _final_fields(status: JobStatus) -> dict[str, Any]:
    return {"status": status.value, "finishedAt": SERVER_TIME, "updatedAt": SERVER_TIME, "lease": DELETE}
