"""The sweeper: nothing stays pending, queued or running forever (Cloud Scheduler -> ``on_sweep``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from core.contract import ErrorInfo, JobDoc, JobMessage, JobStatus
from core.routes import route
from core.work import WorkRef
from functions.events import DocumentEvent
from functions.handlers import Deps, end, handle_job_created
from infra.jobs import utcnow

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    revalidated: list[str] = field(default_factory=list)
    ended_malformed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(
            (
                self.requeued,
                self.failed,
                self.republished,
                self.revalidated,
                self.ended_malformed,
                self.errors,
            )
        )


def sweep(deps: Deps, now: datetime | None = None) -> SweepReport:
    """Recover jobs that nothing will move any more.

    * ``running`` with an expired lease (its worker died): back to ``queued`` and re-published,
      or ``failed`` when its attempts are spent;
    * ``queued`` untouched for ``stale_queued_seconds`` (a message lost or dead-lettered while a
      worker was busy): re-published; the claim makes a duplicate harmless;
    * ``pending`` for ``stale_pending_seconds`` (its created-trigger never ran): validated now;
    * a document that does not fit the contract: ended (``rejected`` if it never ran, else
      ``failed``) with ``invalid_job`` saying why.

    One job's failure is logged with its id and never stops the sweep of the others.
    """
    now = now or utcnow()
    report = SweepReport()
    for job_id, job in deps.jobs.find([JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.PENDING]):
        try:
            _sweep_one(deps, job_id, job, now, report)
        except Exception as exc:  # one bad document must not stop everyone else's recovery
            log.exception("sweep: job %s: %s", job_id, type(exc).__name__)
            report.errors.append(job_id)
    if report:
        log.warning("sweep: %s", report)
    return report


def _sweep_one(deps: Deps, job_id: str, job: JobDoc, now: datetime, report: SweepReport) -> None:
    settings = deps.settings
    age = (now - job.updated_at).total_seconds() if job.updated_at else float("inf")
    if job.malformed:
        to = JobStatus.REJECTED if job.effective_status is JobStatus.PENDING else JobStatus.FAILED
        if end(deps, job_id, to, ErrorInfo(code="invalid_job", message=job.malformed)):
            report.ended_malformed.append(job_id)
    elif job.status is JobStatus.RUNNING and job.parts:
        _sweep_parts(deps, job_id, job, now, age, report)
    elif job.status is JobStatus.RUNNING and job.lease and job.lease.expires_at < now:
        state = deps.jobs.recover(WorkRef(job_id), settings.max_attempts)
        if state is JobStatus.QUEUED:
            deps.bus.publish_job(JobMessage.of(job_id, job))
            report.requeued.append(job_id)
        elif state is JobStatus.FAILED:
            report.failed.append(job_id)
    elif job.status is JobStatus.QUEUED and age > settings.stale_queued_seconds:
        deps.jobs.touch(job_id)
        deps.bus.publish_job(JobMessage.of(job_id, job))
        report.republished.append(job_id)
    elif job.status is JobStatus.PENDING and age > settings.stale_pending_seconds:
        path = f"{settings.jobs_collection}/{job_id}"
        handle_job_created(deps, DocumentEvent(path=path, fields=job.to_firestore()))
        report.revalidated.append(job_id)


def _sweep_parts(
    deps: Deps, job_id: str, job: JobDoc, now: datetime, age: float, report: SweepReport
) -> None:
    """A fanned-out job: re-queue parts whose worker died; re-publish parts nothing picked up."""
    for part, state in (job.parts or {}).items():
        ref = WorkRef(job_id, part)
        if state.status is JobStatus.RUNNING and (state.lease is None or state.lease.expires_at < now):
            if deps.jobs.recover(ref, deps.settings.max_attempts) is None:
                continue
            report.requeued.append(f"{job_id}/{part}")
        elif state.status is JobStatus.QUEUED and age > deps.settings.stale_queued_seconds:
            deps.jobs.touch(job_id)
            report.republished.append(f"{job_id}/{part}")
        else:
            continue
        message = JobMessage.of(job_id, job, part)
        deps.bus.publish_job(message, topic=route(job.pipeline, ref.lane).topic)
