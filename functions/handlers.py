"""What the functions do, as plain functions of typed inputs (the entry points are in main.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.contract import (
    UID_PATTERN,
    ErrorInfo,
    InputFile,
    JobDoc,
    JobMessage,
    JobStatus,
    Notifications,
    Source,
    validate_job_id,
)
from core.errors import InvalidInput, PermanentError, RetryableError, bounded, shown
from core.lanes import allowed_priority
from core.patch import Patch
from core.routes import route
from core.spec import Catalog, FileInput, PipelineModel, PipelineSpec, check_input_location, file_uris
from functions import reuse
from functions.events import DocumentEvent, StorageEvent
from infra import roundtrips
from infra.blobs import BlobStore
from infra.bus import Bus
from infra.errors import TRANSIENT_GOOGLE_ERRORS
from infra.identity import SignInProviders
from infra.jobs import JobStore, LastWrite, utcnow
from infra.settings import Settings
from pipelines.media import local_suffix

log = logging.getLogger(__name__)

UPLOADS_PREFIX = "uploads/"
MAX_INPUT_DEPTH = 8
#: failures the platform should redeliver the event for: a service was unavailable
RETRY_LATER: tuple[type[Exception], ...] = (RetryableError, *TRANSIENT_GOOGLE_ERRORS)


@dataclass
class Deps:
    settings: Settings
    catalog: Catalog
    jobs: JobStore
    blobs: BlobStore
    bus: Bus
    #: the owners' sign-in providers, for quota tiers (None: every owner gets the top-level caps)
    identities: SignInProviders | None = None


# -- Storage: a drop upload creates a job ---------------------------------------------------------


def derived_job_id(bucket: str, name: str, generation: str) -> str:
    """A stable id per object generation, so a redelivered notification finds the same job."""
    return "u" + hashlib.sha256(f"{bucket}/{name}#{generation}".encode()).hexdigest()[:27]


def _metadata_inputs(raw: str, settings: Settings) -> dict[str, Any]:
    """The ``inputs`` custom metadata of a drop upload, bounded like a job document's inputs.

    Raises:
        InvalidInput: not a JSON object, too large, or nested too deep to store.
    """
    if len(raw) > settings.max_inputs_bytes:
        raise InvalidInput(
            f"upload metadata 'inputs' is {len(raw)} bytes; the limit is {settings.max_inputs_bytes}",
            code="invalid_inputs",
        )
    try:
        extra = json.loads(raw)
    except (ValueError, RecursionError):
        extra = None
    if not isinstance(extra, dict):
        raise InvalidInput("upload metadata 'inputs' must be a JSON object", code="invalid_inputs")
    check_inputs_shape(extra, settings)
    return extra


def handle_object_finalized(deps: Deps, event: StorageEvent) -> str | None:
    """Create the job for a drop upload ``uploads/{uid}/{pipeline}/{name}``; returns its id.

    Other objects (``uploads/{uid}/{name}``: inputs for jobs that clients create; anything outside
    ``uploads/``) create nothing. A redelivered notification returns the same id and writes nothing.
    A notification that cannot become a runnable job ends as a rejected job saying why, or (when
    not even that can be stored) is logged and dropped: never redelivered without end.
    """
    obj = event.object
    if event.event_type != "OBJECT_FINALIZE" or not obj.name.startswith(UPLOADS_PREFIX):
        return None
    segments = obj.name.split("/", 3)
    if len(segments) < 4 or not segments[3]:
        return None  # uploads/{uid}/{name}: an input for a client-created job
    _, uid, pipeline, _rest = segments
    uri = f"gs://{obj.bucket}/{obj.name}"
    if not UID_PATTERN.fullmatch(uid):
        # No job can name this owner (and no client could read it): nothing to create.
        log.warning("upload %s: %s is not a user id; no job created", shown(uri, 200), shown(uid))
        return None
    spec = deps.catalog.get(pipeline)
    drop_field = spec.drop_field if spec and spec.drop_field else "file"
    inputs: dict[str, Any] = {}
    error: ErrorInfo | None = None
    if raw := obj.metadata.get("inputs"):
        try:
            inputs.update(_metadata_inputs(raw, deps.settings))
        except InvalidInput as exc:
            error = ErrorInfo.from_exception(exc)
    inputs[drop_field] = uri

    job_id = obj.metadata.get("jobId") or derived_job_id(obj.bucket, obj.name, obj.generation)
    try:
        validate_job_id(job_id)
    except InvalidInput as exc:
        error = ErrorInfo.from_exception(exc)
        job_id = derived_job_id(obj.bucket, obj.name, obj.generation)

    source = Source(kind="upload", bucket=obj.bucket, object=obj.name, generation=obj.generation)
    job = JobDoc(uid=uid, pipeline=pipeline, inputs=inputs, status=JobStatus.PENDING, source=source)
    if error is not None:
        # Created already final: the Firestore trigger ignores it, the client sees why.
        job = job.model_copy(
            update={
                "status": JobStatus.REJECTED,
                "error": error,
                "inputs": {drop_field: uri},
                "notifications": Notifications(due_at=utcnow()),  # due now
            }
        )
    try:
        created = deps.jobs.create(job_id, job)
    except RETRY_LATER:
        raise  # Firestore is unavailable: the platform redelivers the notification
    except Exception as exc:  # Firestore refused the document itself: say so on a minimal one
        log.warning("job %s for %s could not be stored (%s): rejecting", job_id, shown(uri, 200), exc)
        refused = ErrorInfo(
            code="invalid_inputs", message=f"the upload's job could not be stored: {type(exc).__name__}"
        )
        minimal = JobDoc(
            uid=uid,
            pipeline=pipeline,
            inputs={drop_field: uri},
            status=JobStatus.REJECTED,
            source=source,
            error=refused,
            notifications=Notifications(due_at=utcnow()),
        )
        try:
            created = deps.jobs.create(job_id, minimal)
        except RETRY_LATER:
            raise
        except Exception:
            log.exception("upload %s: not even a rejected job could be stored; dropped", shown(uri, 200))
            return None
    if created:
        log.info("job %s created for upload %s", job_id, shown(uri, 200))
        return job_id
    existing = deps.jobs.get(job_id)
    if existing and existing.source and existing.source.object == obj.name:
        log.info("job %s already exists for %s: duplicate notification", job_id, shown(uri, 200))
    else:
        log.warning(
            "upload %s asked for job id %s, which belongs to another job: ignored", shown(uri, 200), job_id
        )
    return job_id


# -- Firestore: a created job is validated, then queued or rejected -------------------------------


def handle_job_created(deps: Deps, event: DocumentEvent) -> JobStatus | None:
    """Validate a new job, admit it against its owner's quota; queue it and publish it, or reject
    it. Returns the state it moved to (``None``: nothing to do, e.g. a duplicate event).

    Every way of creating a job passes here (a client's document, a drop upload, the HTTP API,
    which calls this in-process right after it writes the document), so this is the one place
    that decides whether a job runs.
    """
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
        with roundtrips.stage("validate"):
            checked = validate(deps, job)
    except InvalidInput as exc:
        log.info("job %s rejected: %s", job_id, exc.code)
        end(
            deps,
            job_id,
            JobStatus.REJECTED,
            ErrorInfo.from_exception(exc),
            stamp_created="createdAt" not in event.fields,
        )
        return JobStatus.REJECTED

    patch = Patch().server_time("queued_at").set("pipeline", checked.spec.name).set("attempt", 0)
    if job.created_at is None:
        patch.server_time("created_at")  # a client may leave it out: GET /v1/jobs orders on it
    for backend_field in ("lease", "last_error", "error", "outputs", "parts", "prepared", "progress"):
        patch.delete(backend_field)  # the backend's to write: whatever a document came with is dropped
    if checked.files:
        patch.set("input_files", checked.files)
    if (reused := reuse.reuse_or_mark(deps, job_id, job, checked, patch)) is not None:
        return reused  # the same work was done for this user already: no GPU time spent again
    # The owner's quota admits the job (a conditional write on the ledger) before it is queued:
    # over it, the job ends rejected (quota_exceeded) before any GPU time is spent.
    with roundtrips.stage("admit"):
        policy = deps.settings.quotas
        if deps.identities is not None:  # the caps of the owner's sign-in provider (its tier)
            policy = policy.for_provider(deps.identities.provider(job.uid))
        lane = allowed_priority(job.priority, policy.priorities)
        if lane is None:
            allowed = ", ".join(policy.priorities)
            error = InvalidInput(
                f"priority {shown(str(job.priority))} is not allowed for your account; allowed: {allowed}",
                code="priority_not_allowed",
            )
            log.info("job %s rejected: %s", job_id, error.code)
            end(deps, job_id, JobStatus.REJECTED, ErrorInfo.from_exception(error))
            return JobStatus.REJECTED
        patch.set("priority", lane).set("share_weight", policy.weight)
        written = LastWrite()
        moved, admission = deps.jobs.admit(job_id, job.uid, checked.spec.name, policy, patch, written)
    if moved is None:
        return None  # a duplicate event: the first one queued it (or the client cancelled)
    if moved is JobStatus.REJECTED:
        log.info(
            "job %s rejected: %s", job_id, admission.error.code if admission and admission.error else "?"
        )
        return JobStatus.REJECTED
    try:
        with roundtrips.stage("publish"):
            message = JobMessage(
                job_id=job_id,
                pipeline=checked.spec.name,
                uid=job.uid,
                priority=lane,
                weight=policy.weight,
                queued=written.copy(),
            )
            deps.bus.publish_job(message)
    except RetryableError:
        # Queued but not announced: the service's redriver (or the sweeper) finds it anyway.
        log.warning("job %s queued but its message could not be published", job_id)
    log.info("job %s queued on %s", job_id, route(checked.spec.name).topic)
    return JobStatus.QUEUED


def check_inputs_shape(inputs: Any, settings: Settings) -> None:
    """Bounds on ``inputs`` that hold before any schema: size and nesting.

    Raises:
        InvalidInput: too large, or nested too deep (Firestore stores at most 20 levels).
    """

    def depth(value: Any, level: int = 1) -> int:
        if level > MAX_INPUT_DEPTH:
            return level
        if isinstance(value, dict):
            return max((depth(v, level + 1) for v in value.values()), default=level)
        if isinstance(value, list):
            return max((depth(v, level + 1) for v in value), default=level)
        return level

    if depth(inputs) > MAX_INPUT_DEPTH:
        raise InvalidInput(
            f"inputs are nested more than {MAX_INPUT_DEPTH} levels deep", code="invalid_inputs"
        )
    size = len(json.dumps(inputs, default=str))
    if size > settings.max_inputs_bytes:
        raise InvalidInput(
            f"inputs are {size} bytes as JSON; the limit is {settings.max_inputs_bytes}",
            code="invalid_inputs",
        )


@dataclass(frozen=True)
class Validated:
    spec: PipelineSpec
    inputs: PipelineModel
    #: each input object as it was checked: the worker runs on exactly these generations
    files: dict[str, InputFile]


def validate(deps: Deps, job: JobDoc) -> Validated:
    """Every check that can be made before any GPU time is spent.

    Raises:
        InvalidInput: with a message that says what to change.
        RetryableError: a service the checks need is unavailable (DNS, Storage).
    """
    settings = deps.settings
    spec = deps.catalog.get(job.pipeline)
    if spec is None and job.pipeline in deps.catalog.installed:
        raise InvalidInput(
            f"pipeline {job.pipeline} is not enabled in this deployment (no model is configured for it); "
            f"available: {', '.join(deps.catalog.names)}",
            code="pipeline_unavailable",
        )
    if spec is None:
        known = ", ".join(deps.catalog.names)
        raise InvalidInput(
            f"unknown pipeline {shown(job.pipeline)}; available: {known}", code="unknown_pipeline"
        )
    check_inputs_shape(job.inputs, settings)
    if job.retention_days is not None and job.retention_days > settings.results_ttl_days:
        raise InvalidInput(
            f"retentionDays {job.retention_days} is longer than results are kept here ({settings.results_ttl_days} days)",
            code="invalid_retention",
        )
    try:
        inputs: PipelineModel = spec.inputs.model_validate(job.inputs)
    except ValidationError as exc:
        raise InvalidInput(f"inputs are invalid: {describe(exc)}", code="invalid_inputs") from exc

    config = deps.catalog.config(spec)
    spec.check_input_costs(inputs, config)
    files: dict[str, InputFile] = {}
    whole: dict[str, dict[str, float]] = {}
    for name, uri, rule in file_uris(inputs):
        check_input_location(name, uri, job.uid, settings.media_bucket)
        head = b""
        if rule.header_check or rule.probe:
            # One range read gives both the object's metadata and its first bytes.
            found = deps.blobs.read_start(uri, rule.header_bytes)
            info = found[0] if found else None
            head = found[1] if found else b""
        else:
            info = deps.blobs.stat(uri)
        if info is None:
            raise InvalidInput(f"inputs.{name}: {shown(uri, 200)} does not exist", code="object_not_found")
        limit = min(rule.max_bytes, settings.max_input_bytes)
        if info.size > limit:
            raise InvalidInput(f"inputs.{name} is {info.size} bytes; the limit is {limit}", code="too_large")
        if not rule.accepts(info.content_type):
            raise InvalidInput(
                f"inputs.{name}: content type {shown(info.content_type or 'unknown')} is not accepted; "
                f"expected {', '.join(rule.content_types)}",
                code="unsupported_content_type",
            )
        if rule.header_check or rule.probe:
            complete = len(head) >= info.size
            rule.run_header_check(head, complete=complete, what=f"inputs.{name}", config=config)
            if rule.probe:
                # The tail too: where an MP4's index, an Ogg stream's last timestamp and a
                # transport stream's last clock are, so ffprobe sees the whole object's length.
                tail = b""
                if not complete:
                    start = max(len(head), info.size - rule.header_bytes)
                    tail = deps.blobs.read_head(uri, info.size - start, info.generation, start=start)
                measured = probe_head(
                    rule, head, complete=complete, size=info.size, content_type=info.content_type, tail=tail
                )
                spec.check_file_costs(name, measured or {}, config)
                if complete and measured is not None:
                    whole[name] = measured  # the whole object measured: the worker need not again
        files[name] = InputFile(
            uri=uri,
            generation=info.generation,
            size=info.size,
            content_type=info.content_type,
            content_hash=info.content_hash,
            measured=whole.get(name),
        )
    if spec.precheck:
        spec.run_precheck(inputs, config)
    return Validated(spec, inputs, files)


def probe_head(
    rule: FileInput, head: bytes, *, complete: bool, size: int, content_type: str | None, tail: bytes = b""
) -> dict[str, float] | None:
    """What ``rule``'s probe measures on an object's first bytes, and its last ``tail`` bytes;
    ``None`` when the measuring tool is missing or stalled here.

    They are written where they belong in a private temporary file of the object's size (sparse:
    the bytes between are never read nor stored), named after the validated content type: a
    media reader only ever opens a local file, and sees the object's real size and both ends.
    """
    # One private file, deleted on close (a temporary folder cost a directory walk per input).
    with tempfile.NamedTemporaryFile(prefix="head-", suffix=local_suffix(content_type)) as out:
        out.write(head)
        if tail and size > len(head):
            out.seek(size - len(tail))
            out.write(tail)
            out.truncate(size)
        out.flush()
        try:
            return rule.run_probe(Path(out.name), complete=complete, size=size)
        except (PermanentError, RetryableError) as exc:
            # The measuring tool is missing or stalled here: the worker measures the whole file
            # before anything is decoded, so the job is not let through unchecked.
            log.warning("could not measure an input's head (%s); left to the worker", exc)
            return None


def end(deps: Deps, job_id: str, to: JobStatus, error: ErrorInfo, *, stamp_created: bool = False) -> bool:
    """End a job that is not running (rejected at validation, failed by a sweeper, ...);
    ``stamp_created`` also sets a missing ``createdAt`` (a client's document without one)."""
    patch = Patch().set("error", error)
    if stamp_created:
        patch.server_time("created_at")
    return deps.jobs.transition(job_id, to, patch=patch) is not None


def describe(exc: ValidationError, limit: int = 10) -> str:
    """A pydantic error as one line a person can act on (never the values themselves)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:limit]:
        where = (
            ".".join(shown(p, 40).strip("'") if isinstance(p, str) else str(p) for p in err["loc"]) or "value"
        )
        parts.append(f"{where}: {bounded(err['msg'].removeprefix('Value error, '), 200)}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


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
