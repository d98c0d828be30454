"""How a unit of work ends, as pure functions: the outputs that fit a document, the error it
records, what the attempt cost (``job.usage``, built here once, in the same commit as the ending),
how long its result objects are kept, and the end of a multi-part job from its parts (the join).

The join runs inside the compare-and-set write of the part that ends last (see
:func:`core.lifecycle.decide_finish`), on whichever instance that is: it calls the spec's pure
``join`` and loads no model.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from core.contract import FINAL_STATES, BatchShare, ErrorInfo, JobDoc, JobStatus, Prepared, Progress, Timings
from core.lifecycle import Ending
from core.spec import PipelineSpec
from core.usage import job_usage, parts_usage
from core.work import WorkRef

# Firestore documents are limited to 1 MiB; long transcripts keep their files but drop bulky lists.
MAX_OUTPUTS_BYTES = 700_000


def seconds_between(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None or b < a:
        return None  # a missing or impossible time (a clock, or a client, wrote nonsense)
    return round((b - a).total_seconds(), 3)


class Attempt(Protocol):
    """What the worker holds of one claimed unit (``gpu_service.worker.ClaimedWork``)."""

    @property
    def ref(self) -> WorkRef: ...
    @property
    def job(self) -> JobDoc: ...
    @property
    def claimed_at(self) -> datetime: ...
    @property
    def timings(self) -> dict[str, float]: ...
    @property
    def meter(self) -> dict[str, float]: ...
    @property
    def metadata(self) -> dict[str, Any]: ...


def with_usage(attempt: Attempt, ending: Ending) -> Ending:
    """``ending`` with what the attempt cost, when it ends its unit: a job's usage, or a part's
    (a multi-part job's usage is the sum its join makes, see ``core.usage.parts_usage``)."""
    if ending.usage is not None or ending.status not in FINAL_STATES:
        return ending  # a retry is not an end: the attempt that ends the unit is metered
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


def expiry(job: JobDoc, now: datetime | None = None) -> datetime | None:
    """The custom time of a job's result objects: when its ``retentionDays`` end (the bucket's
    lifecycle rule deletes them after that day); ``None`` leaves them to the folder's TTL."""
    if job.retention_days is None:
        return None
    return (now or datetime.now(UTC)) + timedelta(days=job.retention_days)


def final_error(error: ErrorInfo, state: JobStatus, attempt: int) -> ErrorInfo:
    """The error a job ends with: a retryable one that ran out of attempts says so."""
    if state is JobStatus.FAILED and error.retryable:
        return error.model_copy(
            update={"retryable": False, "message": f"{error.message} (after {attempt} attempts)"}
        )
    return error


def jsonable(data: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return result


def fit_in_document(outputs: dict[str, Any]) -> dict[str, Any]:
    """Drop the bulkiest list fields until the outputs fit in a Firestore document."""

    def size() -> int:
        return len(json.dumps(outputs, default=str))

    if size() <= MAX_OUTPUTS_BYTES:
        return outputs
    dropped = []
    for key, value in sorted(outputs.items(), key=lambda kv: -len(json.dumps(kv[1], default=str))):
        if key == "files" or not isinstance(value, list):
            continue
        outputs[key] = None
        dropped.append(key)
        if size() <= MAX_OUTPUTS_BYTES:
            break
    outputs["truncated"] = dropped
    return outputs


def end_from_parts(spec: PipelineSpec, job: JobDoc) -> Ending:
    """The end of a multi-part job whose parts are all final (a :data:`core.lifecycle.Joiner`
    once ``spec`` is bound; pure, and it may run more than once)."""
    parts = job.parts or {}
    usage = parts_usage(job)  # the prepare step's model time and every part's, charged in all cases
    if any(p.status is JobStatus.CANCELLED for p in parts.values()):
        return Ending(JobStatus.CANCELLED, clear_outputs=True, usage=usage)
    prepared = job.prepared or Prepared()
    done = {name: (p.outputs if p.status is JobStatus.SUCCEEDED else None) for name, p in parts.items()}
    inputs = spec.inputs.model_validate(job.inputs)
    outputs: dict[str, Any] = spec.run_join(inputs, prepared.state, done).model_dump(mode="json")
    files = dict(prepared.files)
    for p in parts.values():
        files.update(p.files or {})
    outputs["files"] = files
    total = seconds_between(job.created_at, datetime.now(UTC))
    timings = job.timings.model_copy(update={"total": total}) if job.timings else Timings(total=total)
    failed = [(name, p) for name, p in parts.items() if p.status is JobStatus.FAILED]
    if failed:
        name, part = failed[0]
        error = part.error or ErrorInfo(code="failed", message="failed")
        error = error.model_copy(
            update={"part": name, "message": f"part {name!r} failed: {error.message}", "retryable": False}
        )
        return Ending(
            JobStatus.FAILED, error=error, outputs=fit_in_document(outputs), timings=timings, usage=usage
        )
    return Ending(
        JobStatus.SUCCEEDED,
        outputs=fit_in_document(outputs),
        progress=Progress(fraction=1.0, stage="done"),
        timings=timings,
        usage=usage,
    )
