"""Request and response bodies. JSON names are camelCase, as in the job document."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from core.contract import ErrorInfo, JobDoc, JobStatus, Live, Notifications, PartialOutput, Progress, Timings
from core.lanes import Priority

#: file names a signed upload may carry (the object is ``uploads/{uid}/{random}-{name}``)
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
CONTENT_TYPE = re.compile(r"^[a-z]+/[a-z0-9][a-z0-9.+-]{0,99}\Z")


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Problem(_Body):
    """Every error answer: the same ``code`` and ``message`` as a job document's ``error``."""

    code: str
    message: str
    retry_after_seconds: int | None = None


class UploadCreate(_Body):
    name: str = Field(description="the file's name: letters, digits, '.', '_', '-'", examples=["talk.wav"])
    content_type: str = Field(description="the MIME type the upload will carry", examples=["audio/wav"])
    size: int = Field(gt=0, description="the file's size in bytes; the URL refuses a larger body")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not FILE_NAME.fullmatch(value):
            raise ValueError("use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("content_type")
    @classmethod
    def _content_type(cls, value: str) -> str:
        value = value.strip().lower()
        if not CONTENT_TYPE.fullmatch(value):
            raise ValueError("must be a MIME type such as audio/wav or image/png")
        return value


class Upload(_Body):
    """Where and how to upload: ``PUT url`` with exactly ``headers``, then use ``uri`` in inputs."""

    uri: str = Field(description="the object as a job input: gs://BUCKET/uploads/{uid}/...")
    url: str = Field(description="the signed URL to PUT the file to")
    method: str = "PUT"
    headers: dict[str, str] = Field(description="send exactly these headers with the PUT")
    expires_at: datetime


class JobCreate(_Body):
    pipeline: str = Field(min_length=1, max_length=100, examples=["transcribe"])
    inputs: dict[str, Any] = Field(
        default_factory=dict, examples=[{"media": "gs://BUCKET/uploads/UID/x.wav"}]
    )
    priority: Priority | None = Field(
        None, description="the lane to wait in: interactive or batch (default: the first your tier allows)"
    )


class Job(_Body):
    """A job as its owner sees it (the job document's public fields)."""

    id: str
    pipeline: str
    status: JobStatus
    inputs: dict[str, Any] = Field(default_factory=dict)
    progress: Progress | None = None
    outputs: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    cancel_requested: bool = False
    priority: Priority | None = None
    timings: Timings | None = None
    live: Live | None = Field(
        None, description="queued or running: the phase; queued: the place in the queue and the estimate"
    )
    partial: PartialOutput | None = Field(None, description="output made so far by a running job")
    created_at: datetime | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    notifications: Notifications | None = Field(
        None, description="the end event's deliveries to your webhooks and devices (docs/notifications.md)"
    )

    @classmethod
    def of(cls, job_id: str, job: JobDoc, live: Live | None = None) -> Job:
        """The job as its owner sees it; ``live`` as computed now (the document's own ``live`` is
        only as fresh as its last write)."""
        return cls(
            live=live,
            partial=job.partial,
            id=job_id,
            pipeline=job.pipeline,
            status=job.effective_status,
            inputs=job.inputs,
            progress=job.progress,
            outputs=job.outputs,
            error=job.error,
            cancel_requested=job.cancel_requested,
            priority=job.priority,
            timings=job.timings,
            created_at=job.created_at,
            queued_at=job.queued_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            notifications=job.notifications,
        )


class JobPage(_Body):
    jobs: list[Job]
    next_page_token: str | None = Field(None, description="pass as pageToken for the next (older) page")


class ResultFile(_Body):
    name: str
    uri: str
    url: str = Field(description="a signed GET URL")
    expires_at: datetime


class Results(_Body):
    id: str
    status: JobStatus
    outputs: dict[str, Any]
    files: list[ResultFile]


class Health(_Body):
    status: str
