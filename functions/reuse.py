"""Never paying twice for the same work: a finished result reused for the same user's same request.

Opt-in per pipeline (``REUSE_PIPELINES``). A validated job's reuse key hashes its owner, its
pipeline, its inputs as validated (defaults filled in) with every input object replaced by
Storage's hash of its content (so a copy under another name matches and a replaced object does
not), and the pipeline's configuration (the model and adapters it runs with). A queued job stores
its key (``reuseKey``); a new job whose key matches a succeeded job of the same owner ends at once
as ``succeeded`` with the same outputs, ``reusedFrom`` naming the original and zero usage. The
owner is part of the key and of the query: a result is never reused across users.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Protocol

from core.contract import InputFile, JobDoc, JobStatus, Progress, Usage
from core.patch import Patch
from core.quota import day_of
from core.spec import Catalog, PipelineModel, PipelineSpec
from core.usage import log_line, log_record
from infra.blobs import BlobStore
from infra.jobs import JobStore
from infra.settings import Settings


class Validated(Protocol):
    """A job's checked inputs (``functions.handlers.Validated``)."""

    @property
    def spec(self) -> PipelineSpec: ...
    @property
    def inputs(self) -> PipelineModel: ...
    @property
    def files(self) -> dict[str, InputFile]: ...


class Deps(Protocol):
    """What reuse needs of the functions' dependencies (``functions.handlers.Deps``)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def catalog(self) -> Catalog: ...
    @property
    def jobs(self) -> JobStore: ...
    @property
    def blobs(self) -> BlobStore: ...


log = logging.getLogger(__name__)


def reuse_key(uid: str, validated: Validated, config: dict[str, Any]) -> str | None:
    """The job's reuse key; ``None`` when an input object has no content hash (never guess)."""
    inputs = validated.inputs.model_dump(mode="json")
    for name, pinned in validated.files.items():
        if pinned.content_hash is None:
            return None
        field, _, entry = name.partition(".")
        if entry:
            inputs[field][entry] = pinned.content_hash
        else:
            inputs[field] = pinned.content_hash
    material = {"uid": uid, "pipeline": validated.spec.name, "inputs": inputs, "config": config}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def reuse_or_mark(
    deps: Deps, job_id: str, job: JobDoc, validated: Validated, queue: Patch
) -> JobStatus | None:
    """End the job as a reuse of an earlier result (returns ``succeeded``), or add its reuse key to
    the ``queue`` patch so that later jobs can reuse it (returns ``None``: queue it as usual)."""
    spec = validated.spec
    if spec.name not in deps.settings.reuse_pipelines or spec.parts:
        return None
    config = deps.catalog.config(spec).model_dump(mode="json")
    key = reuse_key(job.uid, validated, config)
    if key is None:
        return None
    queue.set("reuse_key", key)
    found = deps.jobs.find_reusable(job.uid, spec.name, key)
    if found is None:
        return None
    original_id, original = found
    files = (original.outputs or {}).get("files") or {}
    if not isinstance(files, dict) or any(
        not isinstance(uri, str) or deps.blobs.stat(uri) is None for uri in files.values()
    ):
        return None  # the original's files are gone (its retention ended): run it again
    source = original.reused_from or original_id
    usage = Usage()
    patch = (
        Patch()
        .set("pipeline", spec.name)
        .set("outputs", original.outputs)
        .set("reused_from", source)
        .set("reuse_key", key)
        .set("usage", usage)
        .set("progress", Progress(fraction=1.0, stage="reused"), stamp=True)
        .server_time("queued_at")
        .server_time("started_at")
    )
    if job.created_at is None:
        patch.server_time("created_at")
    for backend_field in ("lease", "last_error", "error", "parts", "prepared"):
        patch.delete(backend_field)
    if validated.files:
        patch.set("input_files", validated.files)
    if (
        deps.jobs.transition(job_id, JobStatus.SUCCEEDED, allowed_from=[JobStatus.PENDING], patch=patch)
        is None
    ):
        return None  # not pending any more (a duplicate event, or cancelled): nothing to do
    log.info("job %s reused the result of %s", job_id, source)
    try:
        deps.jobs.record_usage(job.uid, spec.name, usage, reused=True)
    except Exception:
        log.warning("job %s: its reuse could not be added to the daily roll-up", job_id, exc_info=True)
    now = datetime.now(UTC)
    reused = job.model_copy(update={"reused_from": source, "pipeline": spec.name})
    sys.stdout.write(
        log_line(log_record(job_id, reused, JobStatus.SUCCEEDED, usage, day=day_of(now)), now) + "\n"
    )
    sys.stdout.flush()
    return JobStatus.SUCCEEDED
