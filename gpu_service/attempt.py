"""One claimed attempt of a unit of work, and the small pure helpers its steps share."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from core.contract import ErrorInfo, JobDoc, JobStatus, Timings
from core.errors import JobError
from core.spec import PipelineSpec
from core.work import WorkRef
from infra.jobs import utcnow as utcnow  # the one clock, shared with the sweeper

log = logging.getLogger(__name__)

# Firestore documents are limited to 1 MiB; long transcripts keep their files but drop bulky lists.
MAX_OUTPUTS_BYTES = 700_000


class Ack(StrEnum):
    """What the consumer tells Pub/Sub."""

    DONE = "done"  # ack: the unit ended (or the delivery was a duplicate)
    RETRY = "retry"  # nack: redeliver with backoff
    BUSY = "busy"  # nack: at capacity, the job stays queued


@dataclass
class Outcome:
    ack: Ack
    detail: str
    status: JobStatus | None = None


@dataclass
class Attempt:
    """What one claimed attempt knows: the unit, the job as claimed, and what it has done so far."""

    ref: WorkRef
    job: JobDoc
    number: int
    spec: PipelineSpec
    claimed_at: datetime = field(default_factory=utcnow)
    timings: dict[str, float] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)
    #: Firestore, Storage and Pub/Sub calls made for this attempt (infra.roundtrips)
    roundtrips: Counter[str] = field(default_factory=Counter)

    @property
    def label(self) -> str:
        return f"{self.ref.label} attempt {self.number}"

    @property
    def results_prefix(self) -> str:
        step = f"{self.ref.part}/" if self.ref.part else ""
        return f"results/{self.job.uid}/{self.ref.job_id}/{step}{self.number}/"

    def job_timings(self) -> Timings:
        t = {k: round(v, 3) for k, v in self.timings.items()}
        return Timings(
            delivery=seconds_between(self.job.created_at, self.job.queued_at),
            queue=seconds_between(self.job.queued_at, self.claimed_at),
            total=seconds_between(self.job.created_at, utcnow()),
            **t,
        )


def seconds_between(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None or b < a:
        return None  # a missing or impossible time (a clock, or a client, wrote nonsense)
    return round((b - a).total_seconds(), 3)


def log_error(attempt: Attempt, exc: Exception) -> ErrorInfo:
    if isinstance(exc, JobError):
        log.info("%s: %s (%s)", attempt.label, exc.code, exc)
    else:
        log.exception("%s crashed", attempt.label)
    return ErrorInfo.from_exception(exc, part=attempt.ref.part)


def final_error(error: ErrorInfo, state: JobStatus, attempt: int) -> ErrorInfo:
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
