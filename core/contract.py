"""The job document: the public API that client apps write and listen to.

A client creates ``jobs/{jobId}`` (or uploads to ``uploads/{uid}/{pipeline}/{name}``) and listens to
it. Field names are camelCase in Firestore, as app code (JS, Swift, Kotlin) expects; the Python
attributes are snake_case aliases. New fields may be added; existing names never change.

States and the only allowed transitions::

    pending ──► queued ──► running ──► succeeded
       │           │          │ ├────► failed
       │           │          │ ├────► cancelled
       │           │          │ └────► queued      (retryable error, attempts left)
       │           ├──► cancelled / failed
       ├──► rejected / cancelled / failed
       └──► succeeded                              (reused: the same work already done, reusedFrom)

``succeeded``, ``failed``, ``rejected`` and ``cancelled`` are final: nothing moves a job out of them.
"""

from __future__ import annotations

import contextlib
import functools
import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from core.errors import Cancelled, InvalidInput, JobError, Preempted, RetryableError, bounded, shown
from core.lanes import Priority
from core.work import PART_KEY_PATTERN, WorkRef

JOB_ID_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")
UID_PATTERN = re.compile(r"\A[A-Za-z0-9_.@-]{1,128}\Z")


class JobStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.REJECTED, JobStatus.CANCELLED})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # pending -> succeeded: a result reused from an earlier job of the same user (docs/cost.md)
    JobStatus.PENDING: frozenset(
        {JobStatus.QUEUED, JobStatus.REJECTED, JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.SUCCEEDED}
    ),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.REJECTED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def can_transition(current: JobStatus, new: JobStatus) -> bool:
    return new in TRANSITIONS[current]


class _Doc(BaseModel):
    # Reads ignore fields this version does not know (the contract only ever adds fields); writes
    # go through core.patch.Patch, which refuses them.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_firestore(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="python")


class ErrorInfo(_Doc):
    """``job.error``: what went wrong, and whether trying again could help."""

    code: str = Field(max_length=64)
    message: str
    retryable: bool = False
    part: str | None = Field(None, description="for multi-part jobs: the part that failed")
    retry_after_seconds: int | None = Field(
        None, ge=0, description="quota_exceeded: when a new job may be admitted, in seconds"
    )

    @field_validator("message")
    @classmethod
    def _bounded(cls, value: str) -> str:
        return bounded(value)

    @classmethod
    def attempts_exhausted(cls, attempts: int, last: ErrorInfo | None, part: str | None = None) -> ErrorInfo:
        """The final error of a job (or part) whose retries are spent, naming the last error."""
        message = f"gave up after {attempts} attempts" + (f"; last error: {last.message}" if last else "")
        return cls(code="attempts_exhausted", message=message, retryable=False, part=part)

    @classmethod
    def from_exception(cls, exc: BaseException, *, part: str | None = None) -> ErrorInfo:
        if isinstance(exc, JobError):
            return cls(code=exc.code, message=exc.message, retryable=exc.retryable, part=part)
        return cls(
            code="internal", message=f"internal error: {type(exc).__name__}", retryable=True, part=part
        )


class Phase(StrEnum):
    """What a job is doing now, in words every pipeline shares (``progress.stage`` is its own)."""

    WAITING_FOR_GPU = "waiting_for_gpu"
    LOADING_MODEL = "loading_model"
    DOWNLOADING = "downloading"
    RUNNING = "running"
    UPLOADING = "uploading"


class Progress(_Doc):
    """``job.progress``: a fraction in 0..1 and a stage a person can read."""

    fraction: float = Field(ge=0.0, le=1.0)
    stage: str = Field(max_length=64)
    phase: Phase | None = Field(None, description="backend-written: the stage as a shared phase")
    updated_at: datetime | None = None


class Live(_Doc):
    """``job.live``: where a queued job stands. Backend-written while someone follows the job (the
    API's event stream), at most once per ``LIVE_WRITE_SECONDS``; removed when the job starts."""

    phase: Phase = Phase.WAITING_FOR_GPU
    position: int | None = Field(None, ge=0, description="jobs of its pipeline queued before it")
    estimated_start_at: datetime | None = None
    estimated_end_at: datetime | None = None
    run_seconds: float | None = Field(
        None, ge=0, description="the pipeline's recent run time the estimate uses"
    )
    slots: int | None = Field(None, ge=1, description="the capacity serving the pipeline now")
    updated_at: datetime | None = None


class PartialOutput(_Doc):
    """``job.partial``: what a running attempt has produced so far (transcript segments as they
    are decoded): the last items only (``PARTIAL_MAX_ITEMS``), written with the progress."""

    attempt: int = Field(ge=0)
    count: int = Field(
        ge=0, description="items produced so far; the first item listed is number count - len(items)"
    )
    items: list[dict[str, Any]] = Field(default_factory=list)


class Timings(_Doc):
    """``job.timings``, in seconds. ``load`` is model load paid by this job (0 when warm)."""

    delivery: float | None = Field(None, description="created -> queued: event delivery and validation")
    queue: float | None = Field(None, description="queued -> started")
    download: float | None = Field(None, description="fetching input files")
    load: float | None = Field(None, description="model load paid by this job")
    model_wait: float | None = Field(
        None, description="waiting for a model turn while other units ran on it (MODEL_CONCURRENCY)"
    )
    inference: float | None = None
    write: float | None = Field(None, description="uploading results and committing")
    total: float | None = Field(None, description="created -> finished")


class BatchShare(_Doc):
    """``job.usage.batch``: the batched model call this job ran in, and its share of it."""

    size: int = Field(ge=1, description="jobs in the model call")
    seconds: float = Field(ge=0, description="the whole call's model time")
    work: float = Field(ge=0, description="this job's work units (the share is seconds x work / all work)")


class Usage(_Doc):
    """``job.usage``: what the job cost, written in the commit that ends it (see docs/cost.md).

    ``gpuSeconds`` is the model time this job is charged: its own model call, or its share of a
    batched call apportioned by work; ``loadSeconds`` the model load it paid (0 when warm). A job
    reused from an earlier one's result costs 0 everywhere.
    """

    queue_seconds: float = Field(0.0, ge=0, description="queued -> claimed")
    load_seconds: float = Field(0.0, ge=0, description="model load paid by this job")
    gpu_seconds: float = Field(0.0, ge=0, description="model time charged to this job")
    batch: BatchShare | None = None
    model: str | None = Field(None, description="the model (and version) the pipeline ran, if it says")
    adapters: list[str] | None = Field(None, description="the adapters the pipeline ran with, if it says")


class Lease(_Doc):
    owner: str
    expires_at: datetime


class Source(_Doc):
    """Where a job came from: a drop upload (with its object generation) or a client write."""

    kind: Literal["upload", "client"]
    bucket: str | None = None
    object: str | None = None
    generation: str | None = None


class InputFile(_Doc):
    """``job.inputFiles.{field}``: an input object as validation saw it. The worker downloads
    exactly this generation and checks it again, so an object replaced after validation (a 797-byte
    PNG swapped for a 20 MB one) fails the job instead of running past the limits."""

    uri: str
    generation: str
    size: int = Field(ge=0)
    content_type: str | None = None
    content_hash: str | None = Field(
        None, description="Storage's hash of the content ('md5:...' or 'crc32c:...'), for reuse"
    )
    measured: dict[str, float] | None = Field(
        None,
        description="What the input's probe measured on the whole object at validation (the cost caps' "
        "quantities, such as duration): the worker, reading this same generation, checks its caps on "
        "these instead of measuring again. None: validation saw only the object's ends, or could not "
        "measure it, and the worker measures the whole file.",
    )


class PartState(_Doc):
    """``job.parts.{name}``: one part of a multi-part job, with its own attempt and lease."""

    status: JobStatus = JobStatus.QUEUED
    attempt: int = 0
    lease: Lease | None = None
    progress: Progress | None = None
    outputs: dict[str, Any] | None = None
    files: dict[str, str] | None = None
    error: ErrorInfo | None = None
    seconds: float | None = None
    usage: Usage | None = Field(
        None, description="what this part's attempt that ended it cost; summed into the job's usage"
    )


class Prepared(_Doc):
    """``job.prepared``: what the prepare step of a multi-part job left for its parts."""

    files: dict[str, str] = Field(default_factory=dict)
    state: dict[str, Any] = Field(default_factory=dict)


class Delivery(_Doc):
    """``job.notifications.deliveries.{channel}``: one channel's delivery of the job's end event
    (a webhook endpoint, ``webhook_{endpointId}``, or the owner's devices, ``push``)."""

    kind: Literal["webhook", "push"]
    state: Literal["pending", "delivered", "dead"] = "pending"
    attempts: int = Field(0, ge=0)
    last_status: str | None = Field(None, description="the last attempt's outcome: an HTTP status or why")
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = Field(
        None, description="not before then: the backoff, or an attempt in flight (its lease)"
    )
    delivered_at: datetime | None = None

    @field_validator("last_status")
    @classmethod
    def _short(cls, value: str | None) -> str | None:
        return None if value is None else bounded(value, 200)


class Notifications(_Doc):
    """``job.notifications``: the outbox of a final job, written in the same commit as its end.

    ``owed``: the dispatcher has deliveries to make; ``done``: every channel delivered (or the
    owner registered none); ``dead``: at least one channel ran out of attempts (its delivery says
    why); a redelivery asked through the API makes it ``owed`` again.
    """

    state: Literal["owed", "done", "dead"] = "owed"
    event_id: str | None = Field(None, description="the webhook-id of the end event: the same on every retry")
    deliveries: dict[str, Delivery] | None = None
    redeliveries: int = Field(0, ge=0, description="redeliveries asked through the API")
    due_at: datetime | None = Field(
        None,
        description="while owed: when the next attempt may start (the end, or the earliest pending "
        "channel's nextAttemptAt); unset once done or dead. The dispatcher scans by it",
    )


class JobDoc(_Doc):
    """``jobs/{jobId}`` as stored in Firestore."""

    uid: str
    pipeline: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    status: JobStatus | None = None
    progress: Progress | None = None
    outputs: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    last_error: ErrorInfo | None = None
    attempt: int = 0
    lease: Lease | None = None
    cancel_requested: bool = False
    source: Source | None = None
    input_files: dict[str, InputFile] | None = None
    prepared: Prepared | None = None
    parts: dict[str, PartState] | None = None
    timings: Timings | None = None
    live: Live | None = None
    partial: PartialOutput | None = None
    runtime: dict[str, Any] | None = None
    usage: Usage | None = None
    reused_from: str | None = Field(None, description="the job whose result this one reused (no GPU time)")
    deadline: datetime | None = Field(
        None, description="client-set: a job not started by then is cancelled (deadline_passed), not run late"
    )
    retention_days: int | None = Field(
        None,
        ge=1,
        le=3650,
        description="client-set: days to keep the result files (at most the bucket's TTL); see docs/cost.md",
    )
    reuse_key: str | None = Field(
        None, description="backend-written: the hash of owner, content, inputs and model that reuse matches"
    )
    priority: Priority | None = Field(
        None,
        description="client-set: the lane the job waits in (interactive or batch); the queue writes the "
        "lane used (see docs/cost.md)",
    )
    share_weight: float | None = Field(
        None,
        gt=0,
        description="backend-written: the owner's weight in fair share between users (their tier's)",
    )
    delivery_attempts: int | None = Field(None, description="set when Pub/Sub dead-lettered the job")
    notifications: Notifications | None = Field(
        None, description="backend-written in the commit that ends the job: the end event's deliveries"
    )
    created_at: datetime | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None

    @field_validator("uid")
    @classmethod
    def _uid_shape(cls, value: str) -> str:
        if not UID_PATTERN.fullmatch(value):
            raise ValueError("uid must be 1-128 letters, digits or _.@-")
        return value

    _malformed: str | None = PrivateAttr(None)

    @property
    def effective_status(self) -> JobStatus:
        """A document without ``status`` (the rules now require it of clients) is ``pending``."""
        return self.status or JobStatus.PENDING

    @property
    def malformed(self) -> str | None:
        """Why the stored document does not fit the contract (see :func:`read_job`), or ``None``."""
        return self._malformed


@functools.cache
def _field_adapter(name: str) -> TypeAdapter[Any]:
    annotation: Any = JobDoc.model_fields[name].annotation
    return TypeAdapter(annotation)


def read_job(data: dict[str, Any]) -> JobDoc:
    """A stored job document, as the backend reads it: never raises.

    Clients write job documents, so a stored one may not fit the contract (the rules bound what
    they write, but a document can predate a rule). Such a document is read as the little that can
    be trusted of it (status, uid, pipeline, attempt, lease, cancel request) with ``malformed``
    saying why, so that it can still be ended with a clear error instead of stopping whoever reads
    it.
    """
    try:
        return JobDoc.model_validate(data)
    except ValidationError as exc:
        why = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
    # Keep every field that is valid on its own; drop the others (they are what is wrong).
    fields: dict[str, Any] = {"uid": "", "pipeline": "", "inputs": {}}
    for name, info in JobDoc.model_fields.items():
        key = info.alias or name
        if key not in data:
            continue
        with contextlib.suppress(ValidationError):
            fields[name] = _field_adapter(name).validate_python(data[key])
    if isinstance(data.get("uid"), str):
        fields["uid"] = data["uid"]  # even outside the pattern: it is whose document this is
    job = JobDoc.model_construct(**fields)
    job._malformed = bounded(f"the job document does not fit the contract: {why}", 400)
    return job


class QueuedCopy(BaseModel):
    """The job as the functions' queueing write left it, and the update time Firestore gave that
    write. A claim writes against that update time without reading the job: Firestore takes the
    write only if nobody wrote since, that is, only if the document is still exactly this copy
    (anything else, and the claim reads the job as it does without one)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    #: RFC 3339, to the nanosecond Firestore gave it
    update_time: str = Field(max_length=40)
    #: the document's fields (camelCase)
    job: dict[str, Any]


class JobMessage(BaseModel):
    """The Pub/Sub message on ``jobs-{pipeline}``: a pointer to the job. The functions' first
    message of a job also carries the job as they queued it (``queued``), which saves the claim a
    read; the job document stays the one source of truth (see :class:`QueuedCopy`)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    job_id: str
    pipeline: str
    part: str | None = Field(None, description="for multi-part jobs: which part to run")
    uid: str | None = Field(
        None, max_length=128, description="the job's owner: a scheduling hint for fairness, never trusted"
    )
    priority: Priority | None = Field(None, description="the job's lane: a scheduling hint")
    weight: float | None = Field(None, gt=0, le=1000, description="the owner's fair-share weight: a hint")
    queued: QueuedCopy | None = Field(
        None, description="the job as queued, and that write's update time: the claim's precondition"
    )

    @property
    def ref(self) -> WorkRef:
        return WorkRef(self.job_id, self.part)

    @classmethod
    def of(cls, job_id: str, job: JobDoc, part: str | None = None) -> JobMessage:
        """The message for ``job`` (or its ``part``), with its scheduling hints."""
        return cls(
            job_id=job_id,
            pipeline=job.pipeline,
            part=part,
            uid=job.uid or None,
            priority=job.priority,
            weight=job.share_weight,
        )

    @field_validator("part")
    @classmethod
    def _part_shape(cls, value: str | None) -> str | None:
        if value is not None and not PART_KEY_PATTERN.fullmatch(value):
            raise ValueError("part must be a part key (a-z, 0-9, '_', optionally '-N')")
        return value

    @field_validator("job_id")
    @classmethod
    def _job_id_shape(cls, value: str) -> str:
        if not JOB_ID_PATTERN.fullmatch(value):
            raise ValueError("jobId must be 1-128 letters, digits, _ or -")
        return value


def state_for_error(exc: BaseException, *, attempts_left: bool) -> JobStatus | None:
    """The state a running job ends in after ``exc``; ``None`` means: retry (nack to Pub/Sub).

    ``InvalidInput`` found before a job runs (in the functions) ends it as ``rejected``; found
    while it runs (media that does not decode, say) it ends it as ``failed`` with the error's code,
    since ``running -> rejected`` is not a transition.
    """
    if isinstance(exc, Cancelled):
        return JobStatus.CANCELLED
    if isinstance(exc, Preempted):
        return None  # the worker is going away; the job is not at fault
    if isinstance(exc, RetryableError) or not isinstance(exc, JobError):
        return None if attempts_left else JobStatus.FAILED
    return JobStatus.FAILED


def validate_job_id(job_id: str) -> str:
    if not JOB_ID_PATTERN.fullmatch(job_id):
        raise InvalidInput(
            f"job id {shown(job_id)} is not valid: use 1-128 letters, digits, '_' or '-'",
            code="invalid_job_id",
        )
    return job_id
