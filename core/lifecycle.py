"""The lease life cycle, as pure functions of the typed job document.

Every state change of a unit of work (a job, or one part of it: :class:`~core.work.WorkRef`) is
decided here, from the document as it was read and the caller's view of the world (who it is,
which attempt it holds, what time it is), and comes back as a :class:`Decision`: a result for the
caller and the :class:`~core.patch.Patch` to write, or none. The Firestore edge
(``infra.jobs.JobStore``) reads, calls one of these, and writes the patch only if the document
has not changed since the read (compare-and-set), deciding again when it has. That is what keeps
a job ending exactly once when Pub/Sub delivers a message twice, when a worker that lost its
lease wakes up, or when the parts of one job race to finish.

The rules:

* only a ``queued`` unit (or a ``running`` one whose lease expired) can be claimed, and a claim
  is the only way to run; a duplicate delivery finds the unit final (done), running under a live
  lease (retry later), or not yet validated (``pending``: done, the functions queue it);
* only the lease owner, at the attempt it claimed, can renew, fan out or finish;
* a part's end that leaves every part final also ends the job, in the same write, with what the
  spec's join makes of the parts;
* the sweeper recovers a ``running`` unit whose lease expired: back to the queue, or ``failed``
  when its attempts are spent, or ``cancelled`` when the client asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from core.contract import (
    ErrorInfo,
    JobDoc,
    JobStatus,
    Lease,
    Notifications,
    PartialOutput,
    PartState,
    Prepared,
    Progress,
    Timings,
    can_transition,
)
from core.decisions import (
    PREPARE_WEIGHT,
    Claim,
    ClaimOutcome,
    Decision,
    Ending,
    Joiner,
    LeaseLost,
)
from core.patch import DELETE, SERVER_TIME, Patch
from core.work import WorkRef


@dataclass(frozen=True)
class _Unit:
    status: JobStatus
    attempt: int
    lease: Lease | None
    last_error: ErrorInfo | None
    parts: dict[str, PartState] = field(default_factory=dict)


def unit_view(job: JobDoc, ref: WorkRef) -> _Unit | None:
    if ref.part is None:
        return _Unit(job.effective_status, job.attempt, job.lease, job.last_error, job.parts or {})
    state = (job.parts or {}).get(ref.part)
    if state is None:
        return None
    return _Unit(state.status, state.attempt, state.lease, state.error)


def lease_is_live(lease: Lease | None, now: datetime) -> bool:
    return lease is not None and lease.expires_at > now


def final_patch(patch: Patch, status: JobStatus) -> Patch:
    """The fields every commit that ends a job writes: the state, the times, and the outbox entry
    that owes the end event to the owner's webhooks and devices (in the same write, so no path
    can end a job without owing its notifications; see docs/notifications.md)."""
    patch.set("status", status).server_time("finished_at").server_time("updated_at").delete("lease")
    # Due from the end (the dispatcher scans by ``notifications.dueAt``).
    patch.set("notifications", Notifications(state="owed"), stamp="due_at")
    return patch


def _lease(owner: str, now: datetime, lease_seconds: float) -> Lease:
    return Lease(owner=owner, expires_at=now + timedelta(seconds=lease_seconds))


# -- claim -----------------------------------------------------------------------------------------


def decide_claim(
    job: JobDoc | None,
    ref: WorkRef,
    *,
    owner: str,
    now: datetime,
    lease_seconds: float,
    max_attempts: int,
    join: Joiner | None = None,
    pipeline: str | None = None,
) -> Decision[Claim]:
    """Take ``ref`` for one attempt. Only the returned attempt may renew or finish it.

    ``pipeline`` is the pipeline the delivery is for: a job of another pipeline is left untouched
    (a job runs as what its document says, never as what a message says).

    ``join`` is needed for parts: a part ended at claim time (cancel, spent attempts) may be the
    last one, which ends the job.
    """
    if job is None:
        return Decision(Claim(ClaimOutcome.NOT_FOUND))
    if job.effective_status.is_final:
        return Decision(Claim(ClaimOutcome.FINAL, job, job.attempt))
    if job.malformed:
        # Never run what the contract cannot describe; end it, saying why.
        to = JobStatus.REJECTED if job.effective_status is JobStatus.PENDING else JobStatus.FAILED
        patch = final_patch(Patch(), to).set("error", ErrorInfo(code="invalid_job", message=job.malformed))
        return Decision(Claim(ClaimOutcome.INVALID, job, job.attempt, to), patch)
    if pipeline is not None and job.pipeline != pipeline:
        return Decision(Claim(ClaimOutcome.MISROUTED, job, job.attempt))
    unit = unit_view(job, ref)
    if unit is None:
        return Decision(Claim(ClaimOutcome.NOT_FOUND, job))
    if unit.status.is_final:
        return Decision(Claim(ClaimOutcome.FINAL, job, unit.attempt))
    if ref.part is None:
        return _claim_job(
            job, unit, owner=owner, now=now, lease_seconds=lease_seconds, max_attempts=max_attempts
        )
    if unit.status is JobStatus.RUNNING and lease_is_live(unit.lease, now):
        return Decision(Claim(ClaimOutcome.RUNNING_ELSEWHERE, job, unit.attempt))
    if job.cancel_requested or unit.attempt >= max_attempts:
        if join is None:
            raise ValueError("ending a part needs the pipeline's join")
        if job.cancel_requested:
            outcome, ending = ClaimOutcome.CANCELLED, Ending(JobStatus.CANCELLED)
        else:
            error = ErrorInfo.attempts_exhausted(unit.attempt, unit.last_error, ref.part)
            outcome, ending = ClaimOutcome.ATTEMPTS_EXHAUSTED, Ending(JobStatus.FAILED, error=error)
        ended = _end_part(job, ref, unit.attempt, ending, join)
        return Decision(Claim(outcome, job, unit.attempt, ended.result), ended.patch)
    attempt = unit.attempt + 1
    prefix = ref.field_prefix
    patch = (
        Patch()
        .set(prefix + "status", JobStatus.RUNNING)
        .set(prefix + "attempt", attempt)
        .set(prefix + "lease", _lease(owner, now, lease_seconds))
        .server_time("updated_at")
    )
    return Decision(Claim(ClaimOutcome.CLAIMED, job, attempt), patch)


def _claim_job(
    job: JobDoc, unit: _Unit, *, owner: str, now: datetime, lease_seconds: float, max_attempts: int
) -> Decision[Claim]:
    if job.cancel_requested:
        return Decision(
            Claim(ClaimOutcome.CANCELLED, job, unit.attempt, JobStatus.CANCELLED),
            final_patch(Patch(), JobStatus.CANCELLED),
        )
    if unit.parts:
        return Decision(Claim(ClaimOutcome.FANNED_OUT, job, unit.attempt))
    if job.deadline is not None and job.started_at is None and now > job.deadline:
        # Not started by the client's deadline: cancelled rather than run late (docs/cost.md).
        error = ErrorInfo(
            code="deadline_passed",
            message=f"the job was still queued at its deadline ({job.deadline.isoformat()}); it was not run",
        )
        patch = final_patch(Patch(), JobStatus.CANCELLED).set("error", error)
        return Decision(Claim(ClaimOutcome.CANCELLED, job, unit.attempt, JobStatus.CANCELLED), patch)
    if unit.status is JobStatus.PENDING:
        return Decision(Claim(ClaimOutcome.NOT_QUEUED, job, unit.attempt))
    if unit.status is JobStatus.RUNNING and lease_is_live(unit.lease, now):
        return Decision(Claim(ClaimOutcome.RUNNING_ELSEWHERE, job, unit.attempt))
    if unit.attempt >= max_attempts:
        error = ErrorInfo.attempts_exhausted(unit.attempt, unit.last_error)
        patch = final_patch(Patch(), JobStatus.FAILED).set("error", error)
        return Decision(Claim(ClaimOutcome.ATTEMPTS_EXHAUSTED, job, unit.attempt, JobStatus.FAILED), patch)
    attempt = unit.attempt + 1
    patch = (
        Patch()
        .set("status", JobStatus.RUNNING)
        .set("attempt", attempt)
        .set("lease", _lease(owner, now, lease_seconds))
        .set("progress", Progress(fraction=0.0, stage="starting"), stamp=True)
        .server_time("updated_at")
    )
    if job.live is not None:
        patch.delete("live")  # where it stood in the queue: over once it starts
    if job.started_at is None:
        patch.server_time("started_at")
    return Decision(Claim(ClaimOutcome.CLAIMED, job, attempt), patch)


# -- while it runs ---------------------------------------------------------------------------------


def owned(job: JobDoc | None, ref: WorkRef, owner: str, attempt: int) -> JobDoc:
    """The job, if ``owner`` still holds attempt ``attempt`` of ``ref``.

    Raises:
        LeaseLost: it does not (any more).
    """
    if job is None:
        raise LeaseLost("the job document is gone")
    if ref.part is not None and job.effective_status.is_final:
        raise LeaseLost(f"job is {job.effective_status}")
    unit = unit_view(job, ref)
    if unit is None:
        raise LeaseLost(f"{ref.label} does not exist")
    if unit.status is not JobStatus.RUNNING or unit.attempt != attempt or unit.lease is None:
        raise LeaseLost(
            f"{ref.label} is {unit.status} at attempt {unit.attempt}, not running attempt {attempt}"
        )
    if unit.lease.owner != owner:
        raise LeaseLost(f"{ref.label}'s lease is held by {unit.lease.owner}")
    return job


def decide_heartbeat(
    job: JobDoc | None,
    ref: WorkRef,
    *,
    owner: str,
    attempt: int,
    now: datetime,
    lease_seconds: float,
    progress: Progress | None = None,
    partial: PartialOutput | None = None,
) -> Decision[bool]:
    """Renew the lease (and write progress and a whole job's partial output). The result is the
    client's ``cancelRequested``.

    Raises:
        LeaseLost: the unit is no longer this worker's attempt.
    """
    job = owned(job, ref, owner, attempt)
    prefix = ref.field_prefix
    patch = Patch().set(prefix + "lease.expires_at", now + timedelta(seconds=lease_seconds))
    patch.server_time("updated_at")
    if progress is not None:
        patch.set(prefix + "progress", progress, stamp=True)
        if ref.part is not None:
            parts = dict(job.parts or {})
            parts[ref.part] = parts[ref.part].model_copy(update={"progress": progress})
            patch.set("progress", overall_progress(parts), stamp=True)
    if partial is not None and ref.part is None:
        patch.set("partial", partial)
    return Decision(job.cancel_requested, patch)


def decide_fan_out(
    job: JobDoc | None,
    ref: WorkRef,
    *,
    owner: str,
    attempt: int,
    prepared: Prepared,
    parts: Iterable[str],
    timings: Timings,
) -> Decision[None]:
    """The prepare step's commit: record what it made and queue every part (the job stays running,
    without a lease of its own: its parts hold theirs).

    Raises:
        LeaseLost: another attempt owns the job now, or it already ended.
    """
    if ref.part is not None:
        raise ValueError("only a job's own step fans out")
    owned(job, ref, owner, attempt)
    keys = list(parts)
    states = {key: PartState(status=JobStatus.QUEUED) for key in keys}
    patch = (
        Patch()
        .set("prepared", prepared)
        .set("parts", states)
        .delete("lease")
        .set("progress", overall_progress(states), stamp=True)
        .set("timings", timings)
        .server_time("updated_at")
    )
    return Decision(None, patch)


# -- the end of an attempt -------------------------------------------------------------------------


def decide_finish(
    job: JobDoc | None,
    ref: WorkRef,
    *,
    owner: str | None,
    attempt: int,
    ending: Ending,
    join: Joiner | None = None,
) -> Decision[JobStatus | None]:
    """End (or re-queue) an attempt. The result is the job's final state if this ended the job.

    ``owner=None`` ends a part that no worker holds (the claim or the sweeper does this): it is a
    no-op when the part already ended.

    Raises:
        LeaseLost: ``owner`` no longer holds this attempt.
    """
    if not can_transition(JobStatus.RUNNING, ending.status):
        raise ValueError(f"a running unit cannot become {ending.status}")
    if ref.part is None:
        if owner is None:
            raise ValueError("a job's attempt is ended by its owner")
        owned(job, ref, owner, attempt)
        final = ending.status if ending.status.is_final else None
        return Decision(final, _job_ending(ending, attempt), ending if final else None)
    if join is None:
        raise ValueError("ending a part needs the pipeline's join")
    if owner is not None:
        job = owned(job, ref, owner, attempt)
    elif job is None or job.effective_status.is_final:
        return Decision(None)
    else:
        unit = unit_view(job, ref)
        if unit is None or unit.status.is_final:
            return Decision(None)
    return _end_part(job, ref, attempt, ending, join)


def _job_ending(ending: Ending, attempt: int) -> Patch:
    patch = Patch()
    if ending.status is JobStatus.QUEUED:
        patch.set("status", JobStatus.QUEUED).delete("lease").server_time("updated_at")
        if ending.error is not None:
            patch.set("last_error", ending.error)
        if ending.refund:
            patch.set("attempt", max(attempt - 1, 0))
        return patch
    final_patch(patch, ending.status)
    if ending.outputs is not None:
        patch.set("outputs", ending.outputs)
    elif ending.clear_outputs:
        patch.delete("outputs")
    if ending.progress is not None:
        patch.set("progress", ending.progress, stamp=True)
    if ending.timings is not None:
        patch.set("timings", ending.timings)
    if ending.runtime is not None:
        patch.set("runtime", ending.runtime)
    if ending.usage is not None:
        patch.set("usage", ending.usage)
    if ending.status is JobStatus.SUCCEEDED:
        patch.delete("error").delete("last_error")
    elif ending.error is not None:
        patch.set("error", ending.error)
    return patch


def _end_part(
    job: JobDoc, ref: WorkRef, attempt: int, ending: Ending, join: Joiner
) -> Decision[JobStatus | None]:
    assert ref.part is not None
    state = PartState(
        status=ending.status,
        attempt=max(attempt - 1, 0) if ending.refund else attempt,
        error=ending.error,
        outputs=ending.outputs,
        files=ending.files,
        seconds=ending.seconds,
        progress=ending.progress,
        usage=ending.usage,
    )
    patch = Patch().set(f"parts.{ref.part}", state).server_time("updated_at")
    parts = dict(job.parts or {})
    parts[ref.part] = state
    if not all(p.status.is_final for p in parts.values()):
        return Decision(None, patch)
    job_ending = join(job.model_copy(update={"parts": parts}))
    return Decision(job_ending.status, patch.merge(_job_ending(job_ending, job.attempt)), job_ending)


def overall_progress(parts: dict[str, PartState], prepare_weight: float = PREPARE_WEIGHT) -> Progress:
    """A multi-part job's progress: the prepare step's share, then the mean of its parts."""
    fractions = [
        1.0 if p.status.is_final else (p.progress.fraction if p.progress else 0.0) for p in parts.values()
    ]
    mean = sum(fractions) / len(fractions) if fractions else 1.0
    running = [name for name, p in parts.items() if not p.status.is_final]
    stage = ("parts: " + ", ".join(running)) if running else "joining"
    return Progress(fraction=prepare_weight + (1 - prepare_weight) * mean, stage=stage[:64])


#: What one delivery came to in the worker: it did not run the unit (a :class:`Claim`, and why), or
#: it committed how the attempt ended (an :class:`Ending`).
Delivered = Claim | Ending

#: The claims whose message must stay with Pub/Sub: another live attempt may die, and a pipeline not
#: served here is refused until the dead-letter policy ends the job clearly.
_REDELIVERED = frozenset({ClaimOutcome.RUNNING_ELSEWHERE, ClaimOutcome.NOT_SERVED})


def redeliver(result: Delivered) -> bool:
    """Whether Pub/Sub should deliver the message again (push: a non-2xx reply; pull: a nack)
    rather than drop it: true for a unit running elsewhere, a pipeline not served here, and an
    attempt that ended ``queued`` (to be tried again, with backoff)."""
    if isinstance(result, Claim):
        return result.outcome in _REDELIVERED
    return result.status is JobStatus.QUEUED


def described(result: Delivered) -> str:
    """A delivery's result in a word for logs and the push reply: the claim's outcome, or the
    status the attempt ended with (and its error code)."""
    if isinstance(result, Claim):
        return result.outcome.value
    code = f" ({result.error.code})" if result.error is not None else ""
    return f"{result.status.value}{code}"


__all__ = [
    "DELETE",
    "PREPARE_WEIGHT",
    "SERVER_TIME",
    "Claim",
    "ClaimOutcome",
    "Decision",
    "Delivered",
    "Ending",
    "Joiner",
    "LeaseLost",
    "decide_claim",
    "decide_fan_out",
    "decide_finish",
    "decide_heartbeat",
    "described",
    "final_patch",
    "lease_is_live",
    "overall_progress",
    "owned",
    "redeliver",
    "unit_view",
]
