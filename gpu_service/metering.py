"""The worker's side of usage: ``job.usage`` on the ending of a job, and its log line once ended.

The usage goes into the same commit as the ending (:meth:`infra.jobs.JobStore.finish` also adds
it to the owner's daily roll-up in that commit); the line is printed only after the commit
succeeded, so a job whose ending lost a race (a duplicate, a lost lease) is never counted twice.
"""

from __future__ import annotations

import dataclasses
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from core.contract import BatchShare, JobDoc, JobStatus
from core.decisions import Ending
from core.quota import day_of
from core.spec import PipelineSpec
from core.usage import job_usage, log_line, log_record
from core.work import WorkRef
from gpu_service.endings import seconds_between


class Metered(Protocol):
    """What the worker holds of one claimed unit (``gpu_service.worker.ClaimedWork``)."""

    @property
    def ref(self) -> WorkRef: ...
    @property
    def job(self) -> JobDoc: ...
    @property
    def attempt(self) -> int: ...
    @property
    def spec(self) -> PipelineSpec: ...
    @property
    def claimed_at(self) -> datetime: ...
    @property
    def timings(self) -> dict[str, float]: ...
    @property
    def meter(self) -> dict[str, float]: ...
    @property
    def metadata(self) -> dict[str, Any]: ...


def with_usage(attempt: Metered, ending: Ending) -> Ending:
    """``ending`` with what the attempt cost, when it ends its unit: a job's usage, or a part's
    (a multi-part job's usage is the sum its join makes, see ``core.usage.parts_usage``)."""
    if not ending.status.is_final:
        return ending
    if ending.usage is not None:
        return ending
    meter = attempt.meter
    batch = None
    if "batch_size" in meter:
        batch = BatchShare(
            size=int(meter["batch_size"]),
            seconds=round(meter.get("batch_seconds", 0.0), 6),
            work=meter.get("work", 1.0),
        )
    usage = job_usage(
        # a part's queue time is not the job's: the job's is its prepare step's
        queue_seconds=None
        if attempt.ref.part
        else seconds_between(attempt.job.queued_at, attempt.claimed_at),
        load_seconds=attempt.timings.get("load", 0.0),
        model_seconds=attempt.timings.get("inference", 0.0),
        batch=batch,
        share=meter.get("gpu_seconds"),
        metadata=attempt.metadata,
    )
    return dataclasses.replace(ending, usage=usage)


def report(attempt: Metered, ending: Ending, final: JobStatus | None) -> None:
    """The usage line of a job that this commit ended (stdout: Cloud Logging's JSON payload).
    ``ending`` is the job's: for a part that ended its job, the join's (with the job's usage)."""
    if final is None or ending.usage is None:
        return
    now = datetime.now(UTC)
    job = attempt.job.model_copy(update={"attempt": attempt.attempt})
    code = ending.error.code if ending.error is not None else None
    record = log_record(attempt.ref.job_id, job, final, ending.usage, day=day_of(now), error_code=code)
    sys.stdout.write(log_line(record, now) + "\n")
    sys.stdout.flush()


def expiry(job: JobDoc, now: datetime | None = None) -> datetime | None:
    """The custom time of a job's result objects: when its ``retentionDays`` end (the bucket's
    lifecycle rule deletes them after that day); ``None`` leaves them to the folder's TTL."""
    if job.retention_days is None:
        return None
    return (now or datetime.now(UTC)) + timedelta(days=job.retention_days)
