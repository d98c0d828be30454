"""What the functions do, as plain functions of typed inputs (the entry points are in main.py)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from core.contract import (
    ErrorInfo,
    JobDoc,
    JobMessage,
    JobStatus,
    Source,
    validate_job_id,
)
from core.errors import InvalidInput, RetryableError
from core.patch import Patch
from core.routes import route
from core.spec import Catalog, PipelineModel, PipelineSpec, parse_gs_uri
from core.work import WorkRef
from functions.events import DocumentEvent, StorageEvent
from infra.blobs import BlobStore
from infra.bus import Bus
from infra.jobs import JobStore, utcnow
from infra.settings import Settings

log = logging.getLogger(__name__)

UPLOADS_PREFIX = "uploads/"


@dataclass
class Deps:
    settings: Settings
    catalog: Catalog
    jobs: JobStore
    blobs: BlobStore
    bus: Bus


# -- Storage: a drop upload creates a job ---------------------------------------------------------


def derived_job_id(bucket: str, name: str, generation: str) -> str:
    """A stable id per object generation, so a redelivered notification finds the same job."""
    return "u" + hashlib.sha256(f"{bucket}/{name}#{generation}".encode()).hexdigest()[:27]


def handle_object_finalized(deps: Deps, event: StorageEvent) -> str | None:
    """Create the job for a drop upload ``uploads/{uid}/{pipeline}/{name}``; returns its id.

    Other objects (``uploads/{uid}/{name}``: inputs for jobs that clients create; anything outside
    ``uploads/``) create nothing. A redelivered notification returns the same id and writes nothing.
    """
    obj = event.object
    if event.event_type != "OBJECT_FINALIZE" or not obj.name.startswith(UPLOADS_PREFIX):
        return None
    parts = obj.name.split("/", 3)
    if len(parts) < 4 or not parts[3]:
        return None  # uploads/{uid}/{name}: an input for a client-created job
    _, uid, pipeline, _rest = parts
    uri = f"gs://{obj.bucket}/{obj.name}"
    spec = deps.catalog.get(pipeline)
    field = spec.drop_field if spec and spec.drop_field else "file"
    inputs: dict[str, Any] = {}
    error: ErrorInfo | None = None
    if raw := obj.metadata.get("inputs"):
        try:
            extra = json.loads(raw)
            if not isinstance(extra, dict):
                raise ValueError("not an object")
            inputs.update(extra)
        except ValueError:
            error = ErrorInfo(code="invalid_input", message="object metadata 'inputs' must be a JSON object")
    inputs[field] = uri

    job_id = obj.metadata.get("jobId") or derived_job_id(obj.bucket, obj.name, obj.generation)
    try:
        validate_job_id(job_id)
    except InvalidInput as exc:
        error = ErrorInfo.from_exception(exc)
        job_id = derived_job_id(obj.bucket, obj.name, obj.generation)

    job = JobDoc(
        uid=uid,
        pipeline=pipeline,
        inputs=inputs,
        status=JobStatus.PENDING,
        source=Source(kind="upload", bucket=obj.bucket, object=obj.name, generation=obj.generation),
    )
    if error is not None:
        # Created already final: the Firestore trigger ignores it, the client sees why.
        job = job.model_copy(update={"status": JobStatus.REJECTED, "error": error})
    if deps.jobs.create(job_id, job):
        log.info("job %s created for upload %s", job_id, uri)
        return job_id
    existing = deps.jobs.get(job_id)
    if existing and existing.source and existing.source.object == obj.name:
        log.info("job %s already exists for %s: duplicate notification", job_id, uri)
    else:
        log.warning("upload %s asked for job id %s, which belongs to another job: ignored", uri, job_id)
    return job_id


# -- Firestore: a created job is validated, then queued or rejected -------------------------------


def handle_job_created(deps: Deps, event: DocumentEvent) -> JobStatus | None:
    """Validate a new job; queue it and publish it, or reject it. Returns the state it ended in."""
    job_id = event.doc_id
    status = event.fields.get("status")
    if status not in (None, JobStatus.PENDING.value):
        return None  # created by a server in a final state, or not a client job
    try:
        validate_job_id(job_id)
        try:
            job = JobDoc.model_validate(event.fields)
        except ValidationError as exc:
            raise InvalidInput(f"job document is invalid: {describe(exc)}", code="invalid_job") from exc
        spec = validate(deps, job)
    except InvalidInput as exc:
        log.info("job %s rejected: %s", job_id, exc)
        end(deps, job_id, JobStatus.REJECTED, ErrorInfo.from_exception(exc))
        return JobStatus.REJECTED

    if (
        deps.jobs.transition(
            job_id,
            JobStatus.QUEUED,
            allowed_from=[JobStatus.PENDING],
            patch=Patch().server_time("queued_at").set("pipeline", spec.name),
        )
        is None
    ):
        return None  # a duplicate event: the first one queued it (or the client cancelled)
    try:
        deps.bus.publish_job(JobMessage(job_id=job_id, pipeline=spec.name))
    except RetryableError as exc:
        end(deps, job_id, JobStatus.FAILED, ErrorInfo.from_exception(exc))
        raise
    log.info("job %s queued on %s", job_id, route(spec.name).topic)
    return JobStatus.QUEUED


def validate(deps: Deps, job: JobDoc) -> PipelineSpec:
    """Every check that can be made before any GPU time is spent.

    Raises:
        InvalidInput: with a message that says what to change.
    """
    settings = deps.settings
    spec = deps.catalog.get(job.pipeline)
    if spec is None:
        known = ", ".join(deps.catalog.names)
        raise InvalidInput(f"unknown pipeline {job.pipeline!r}; available: {known}", code="unknown_pipeline")
    try:
        inputs: PipelineModel = spec.inputs.model_validate(job.inputs)
    except ValidationError as exc:
        raise InvalidInput(f"inputs are invalid: {describe(exc)}", code="invalid_inputs") from exc

    for field, rule in spec.file_fields().items():
        uri = getattr(inputs, field)
        if uri is None:
            continue
        bucket, name = parse_gs_uri(uri)
        if bucket != settings.media_bucket:
            raise InvalidInput(
                f"inputs.{field}: files must be in gs://{settings.media_bucket}/, not gs://{bucket}/",
                code="wrong_bucket",
            )
        if not name.startswith(f"{UPLOADS_PREFIX}{job.uid}/"):
            raise InvalidInput(
                f"inputs.{field}: {uri} does not belong to user {job.uid} "
                f"(upload it under uploads/{job.uid}/)",
                code="forbidden_object",
            )
        info = deps.blobs.stat(uri)
        if info is None:
            raise InvalidInput(f"inputs.{field}: {uri} does not exist", code="object_not_found")
        limit = min(rule.max_bytes, settings.max_input_bytes)
        if info.size > limit:
            raise InvalidInput(
                f"inputs.{field}: {uri} is {info.size} bytes; the limit is {limit}",
                code="too_large",
            )
        if not rule.accepts(info.content_type):
            raise InvalidInput(
                f"inputs.{field}: content type {info.content_type or 'unknown'!r} is not accepted; "
                f"expected {', '.join(rule.content_types)}",
                code="unsupported_content_type",
            )
    if spec.precheck:
        spec.run_precheck(inputs, deps.catalog.config(spec))
    return spec


def end(deps: Deps, job_id: str, to: JobStatus, error: ErrorInfo) -> bool:
    """End a job that is not running (rejected at validation, failed by a sweeper, ...)."""
    return deps.jobs.transition(job_id, to, patch=Patch().set("error", error)) is not None


def describe(exc: ValidationError) -> str:
    """A pydantic error as one line a person can act on."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


# -- Dead letters: a message Pub/Sub gave up on ends its job --------------------------------------


def handle_dead_letter(deps: Deps, data: bytes, attributes: dict[str, str]) -> str | None:
    try:
        message = JobMessage.model_validate_json(data)
    except ValidationError:
        log.error("dead letter that is not a job message: %r %s", data[:200], attributes)
        return None
    count = attributes.get("CloudPubSubDeadLetterSourceDeliveryCount", "?")
    job = deps.jobs.get(message.job_id)
    if job is None:
        return None
    detail = f"; last error: {job.last_error.message}" if job.last_error else ""
    error = ErrorInfo(
        code="dead_lettered",
        message=f"delivery gave up after {count} attempts{detail}",
        retryable=False,
        part=message.part,
    )
    patch = Patch().set("error", error)
    if count.isdigit():
        patch.set("delivery_attempts", int(count))
    if deps.jobs.transition(
        message.job_id,
        JobStatus.FAILED,
        allowed_from=[JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.PENDING],
        patch=patch,
    ):
        log.warning("job %s failed after dead-lettering (%s deliveries)", message.job_id, count)
        return message.job_id
    return None


# -- The sweeper: nothing stays pending, queued or running forever --------------------------------


@dataclass
class SweepReport:
    requeued: list[str]
    failed: list[str]
    republished: list[str]
    revalidated: list[str]

    def __bool__(self) -> bool:
        return any((self.requeued, self.failed, self.republished, self.revalidated))


def sweep(deps: Deps, now: datetime | None = None) -> SweepReport:
    """Recover jobs that nothing will move any more.

    * ``running`` with an expired lease (its worker died): back to ``queued`` and re-published,
      or ``failed`` when its attempts are spent;
    * ``queued`` untouched for ``stale_queued_seconds`` (a message lost or dead-lettered while a
      worker was busy): re-published; the claim makes a duplicate harmless;
    * ``pending`` for ``stale_pending_seconds`` (its created-trigger never ran): validated now.
    """
    settings = deps.settings
    now = now or utcnow()
    report = SweepReport([], [], [], [])
    for job_id, job in deps.jobs.find([JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.PENDING]):
        age = (now - job.updated_at).total_seconds() if job.updated_at else float("inf")
        if job.status is JobStatus.RUNNING and job.parts:
            _sweep_parts(deps, job_id, job, now, age, report)
        elif job.status is JobStatus.RUNNING and job.lease and job.lease.expires_at < now:
            state = deps.jobs.recover(WorkRef(job_id), settings.max_attempts)
            if state is JobStatus.QUEUED:
                deps.bus.publish_job(JobMessage(job_id=job_id, pipeline=job.pipeline))
                report.requeued.append(job_id)
            elif state is JobStatus.FAILED:
                report.failed.append(job_id)
        elif job.status is JobStatus.QUEUED and age > settings.stale_queued_seconds:
            deps.jobs.touch(job_id)
            deps.bus.publish_job(JobMessage(job_id=job_id, pipeline=job.pipeline))
            report.republished.append(job_id)
        elif job.status is JobStatus.PENDING and age > settings.stale_pending_seconds:
            fields = job.to_firestore()
            handle_job_created(
                deps, DocumentEvent(path=f"{settings.jobs_collection}/{job_id}", fields=fields)
            )
            report.revalidated.append(job_id)
    if report:
        log.warning("sweep: %s", report)
    return report


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
        message = JobMessage(job_id=job_id, pipeline=job.pipeline, part=part)
        deps.bus.publish_job(message, topic=route(job.pipeline, ref.lane).topic)
