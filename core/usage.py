"""What a job cost: its usage record, a batch's time split between its jobs, the daily roll-up,
and the one log line per finished job that a Cloud Logging sink exports to BigQuery.

Pure: no Google library. The worker measures, :func:`job_usage` builds ``job.usage`` (written in
the commit that ends the job), :func:`rollup` is what that same commit adds to the owner's ledger
(``quotas/{uid}.usage.{day}``, with Firestore increments), and :func:`log_record` is the line the
worker prints once the commit succeeded.

How a batched model call is charged: the call's wall time is split between its jobs in
proportion to their work (:func:`apportion`). A pipeline may say what one job's work is
(``batch_work(inputs)``: audio seconds, pixels, steps...); without it every job of the batch is
one unit, so the call is split evenly. The shares of one call always sum to its time. A call
that fails as a whole and is split in halves charges its time to the jobs it held, so the shares
of all the calls still sum to the model time spent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from core.contract import BatchShare, JobDoc, JobStatus, Usage

#: The ``logName`` suffix and the ``kind`` of the usage line: the sink's filter matches on it.
USAGE_LOG_KIND = "gpujobs.usage"
#: Fields of the usage line, in order: a stable schema for the BigQuery table the sink fills.
USAGE_FIELDS = (
    "kind",
    "jobId",
    "uid",
    "pipeline",
    "status",
    "errorCode",
    "day",
    "queueSeconds",
    "loadSeconds",
    "gpuSeconds",
    "batchSize",
    "batchSeconds",
    "model",
    "adapters",
    "reusedFrom",
    "attempt",
)


def apportion(seconds: float, works: Sequence[float]) -> list[float]:
    """Split ``seconds`` between jobs in proportion to their ``works``; the shares sum to
    ``seconds``. A work that is not a positive finite number counts as one unit (a pipeline's
    estimate must never make a job free or take the whole call)."""
    clean = [w if isinstance(w, int | float) and math.isfinite(w) and w > 0 else 1.0 for w in works]
    total = sum(clean)
    if not clean:
        return []
    shares = [seconds * w / total for w in clean]
    # Floating-point sums drift by an ulp or two: the last share takes the remainder exactly.
    shares[-1] = seconds - sum(shares[:-1])
    return shares


def job_usage(
    *,
    queue_seconds: float | None,
    load_seconds: float,
    model_seconds: float,
    batch: BatchShare | None = None,
    share: float | None = None,
    metadata: dict[str, Any] | None = None,
) -> Usage:
    """``job.usage`` from what the worker measured. ``share`` is the job's part of a batched call
    (then ``batch`` describes the call); otherwise the job's own model time is charged."""
    metadata = metadata or {}
    model = metadata.get("model")
    adapters = metadata.get("adapters") or metadata.get("loras")
    return Usage(
        queue_seconds=round(max(queue_seconds or 0.0, 0.0), 3),
        load_seconds=round(max(load_seconds, 0.0), 3),
        gpu_seconds=round(max(share if share is not None else model_seconds, 0.0), 6),
        batch=batch,
        model=str(model)[:200] if model is not None else None,
        adapters=[str(a)[:200] for a in adapters][:16] if isinstance(adapters, list | tuple) else None,
    )


def parts_usage(job: JobDoc) -> Usage:
    """``job.usage`` of a multi-part job, once its parts are final: the prepare step's model time
    and load (its ``timings``, written when it fanned the parts out) plus each part's own
    ``usage``. A part that never ran adds nothing. The model and adapters are the first part's
    that says them."""
    timings = job.timings
    queue = timings.queue if timings and timings.queue is not None else 0.0
    load = timings.load if timings and timings.load is not None else 0.0
    gpu = timings.inference if timings and timings.inference is not None else 0.0
    model: str | None = None
    adapters: list[str] | None = None
    for part in (job.parts or {}).values():
        if part.usage is None:
            continue
        load += part.usage.load_seconds
        gpu += part.usage.gpu_seconds
        model = model or part.usage.model
        adapters = adapters or part.usage.adapters
    return Usage(
        queue_seconds=round(max(queue, 0.0), 3),
        load_seconds=round(max(load, 0.0), 3),
        gpu_seconds=round(max(gpu, 0.0), 6),
        model=model,
        adapters=adapters,
    )


class PipelineDay(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    jobs: int = 0
    gpu_seconds: float = 0.0


class DayUsage(BaseModel):
    """``quotas/{uid}.usage.{day}``: the sum of the usage of the user's jobs that ended that day."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    jobs: int = 0
    reused: int = 0
    queue_seconds: float = 0.0
    load_seconds: float = 0.0
    gpu_seconds: float = 0.0
    pipelines: dict[str, PipelineDay] = Field(default_factory=dict)

    def mean_gpu_seconds(self, pipeline: str) -> float | None:
        """This user's mean model time per job of ``pipeline`` that day (None: no job ended)."""
        day = self.pipelines.get(pipeline)
        if day is None or day.jobs <= 0:
            return None
        return day.gpu_seconds / day.jobs


def rollup(usage: Usage, pipeline: str, *, reused: bool = False) -> dict[str, float]:
    """What one ended job adds to its owner's day, as ``{field path under the day: amount}``
    (the Firestore edge turns each into an increment, so concurrent ends never lose one)."""
    return {
        "jobs": 1,
        "reused": 1 if reused else 0,
        "queueSeconds": usage.queue_seconds,
        "loadSeconds": usage.load_seconds,
        "gpuSeconds": usage.gpu_seconds,
        f"pipelines.{pipeline}.jobs": 1,
        f"pipelines.{pipeline}.gpuSeconds": usage.gpu_seconds,
    }


def day_of(now: datetime) -> str:
    """The day (UTC) that a use counts against: the key of the owner's daily roll-up."""
    return now.astimezone(UTC).date().isoformat()


def log_record(
    job_id: str, job: JobDoc, status: JobStatus, usage: Usage, *, day: str, error_code: str | None = None
) -> dict[str, Any]:
    """The usage line of one finished job: every field of :data:`USAGE_FIELDS`, always present
    (``null`` when unknown), so the exported table keeps one schema."""
    record: dict[str, Any] = {
        "kind": USAGE_LOG_KIND,
        "jobId": job_id,
        "uid": job.uid,
        "pipeline": job.pipeline,
        "status": status.value,
        "errorCode": error_code,
        "day": day,
        "queueSeconds": usage.queue_seconds,
        "loadSeconds": usage.load_seconds,
        "gpuSeconds": usage.gpu_seconds,
        "batchSize": usage.batch.size if usage.batch else None,
        "batchSeconds": usage.batch.seconds if usage.batch else None,
        "model": usage.model,
        "adapters": usage.adapters,
        "reusedFrom": job.reused_from,
        "attempt": job.attempt,
    }
    assert tuple(record) == USAGE_FIELDS
    return record


def log_line(record: dict[str, Any], now: datetime) -> str:
    """One JSON line for stdout: Cloud Logging takes it as the entry's ``jsonPayload`` (with
    ``severity`` and ``message`` lifted out), which the sink's filter selects by ``kind``."""
    payload = {"severity": "INFO", "message": f"usage {record['jobId']}", "time": now.isoformat(), **record}
    return json.dumps(payload, separators=(",", ":"), default=str)
