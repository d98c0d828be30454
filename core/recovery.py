"""Moves made from outside a running attempt, as pure functions of the typed job document: the
sweeper's recovery of an expired lease, and the plain transitions of validation, dead letters and
the sweeper (see :mod:`core.lifecycle` for the attempt's own decisions)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from core.contract import ErrorInfo, JobDoc, JobStatus, Lease, can_transition
from core.decisions import Decision
from core.lifecycle import final_patch, lease_is_live, unit_view
from core.patch import Patch
from core.work import WorkRef


def worker_lost(attempt: int, lease: Lease | None, part: str | None = None) -> ErrorInfo:
    owner = lease.owner if lease else "unknown"
    return ErrorInfo(
        code="worker_lost",
        message=f"the worker running attempt {attempt} ({owner}) stopped renewing its lease",
        retryable=True,
        part=part,
    )


def decide_recover(
    job: JobDoc | None, ref: WorkRef, *, now: datetime, max_attempts: int
) -> Decision[JobStatus | None]:
    """For the sweeper: a ``running`` unit whose lease expired goes back to ``queued`` (a job also
    ends ``failed`` when its attempts are spent, or ``cancelled`` when asked; a part's next claim
    does that). The result is the unit's new state, or ``None`` when it was not stuck."""
    if job is None or job.effective_status.is_final:
        return Decision(None)
    unit = unit_view(job, ref)
    if unit is None or unit.status is not JobStatus.RUNNING or lease_is_live(unit.lease, now):
        return Decision(None)
    if ref.part is None and unit.parts:
        return Decision(None)  # a fanned-out job: its parts are recovered one by one
    lost = worker_lost(unit.attempt, unit.lease, ref.part)
    if ref.part is not None:
        patch = (
            Patch()
            .set(f"parts.{ref.part}.status", JobStatus.QUEUED)
            .delete(f"parts.{ref.part}.lease")
            .set(f"parts.{ref.part}.error", lost)
            .server_time("updated_at")
        )
        return Decision(JobStatus.QUEUED, patch)
    if job.cancel_requested:
        return Decision(JobStatus.CANCELLED, final_patch(Patch(), JobStatus.CANCELLED))
    if unit.attempt >= max_attempts:
        error = lost.model_copy(
            update={"retryable": False, "message": f"{lost.message}; gave up after {unit.attempt} attempts"}
        )
        return Decision(JobStatus.FAILED, final_patch(Patch(), JobStatus.FAILED).set("error", error))
    patch = (
        Patch()
        .set("status", JobStatus.QUEUED)
        .delete("lease")
        .set("last_error", lost)
        .server_time("updated_at")
    )
    return Decision(JobStatus.QUEUED, patch)


def decide_transition(
    job: JobDoc | None,
    to: JobStatus,
    *,
    allowed_from: Iterable[JobStatus] | None = None,
    patch: Patch | None = None,
) -> Decision[JobDoc | None]:
    """Move a job to ``to`` if its state allows it. The result is the job as it was, or ``None``
    (nothing written) when it does not exist or its state does not allow the move."""
    if job is None:
        return Decision(None)
    current = job.effective_status
    allowed = set(allowed_from) if allowed_from is not None else None
    if (allowed is not None and current not in allowed) or not can_transition(current, to):
        return Decision(None)
    out = Patch()
    if to.is_final:
        final_patch(out, to)
    else:
        out.set("status", to).server_time("updated_at")
    if patch is not None:
        out.merge(patch)
    return Decision(job, out)


__all__ = ["decide_recover", "decide_transition", "worker_lost"]
