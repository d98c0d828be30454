"""What the routes do, as plain functions of the caller and typed bodies (no HTTP here)."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from google.cloud import firestore

from api.auth import TokenVerifier, User
from api.errors import ApiError
from api.models import Job, JobCreate, JobPage, ResultFile, Results, Upload, UploadCreate
from api.signing import UrlSigner
from core.contract import JOB_ID_PATTERN, JobDoc, JobStatus, read_job
from core.errors import InvalidInput
from core.patch import Patch
from functions.events import DocumentEvent
from functions.handlers import RETRY_LATER, Deps, check_inputs_shape, handle_job_created

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100
IDEMPOTENCY_KEY_CHARS = 255


@dataclass
class Api:
    deps: Deps
    verifier: TokenVerifier
    signer: UrlSigner
    db: firestore.Client

    @property
    def settings(self) -> Any:
        return self.deps.settings

    def jobs(self) -> firestore.CollectionReference:
        return self.db.collection(self.settings.jobs_collection)


def job_id_for(uid: str, key: str | None) -> str:
    """The job id of a create: derived from the caller and the idempotency key, so a retried POST
    finds the same document; random without a key."""
    if key is None:
        return "a" + uuid.uuid4().hex
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise ApiError(
            "invalid_request", f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_CHARS} printable characters"
        )
    return "k" + hashlib.sha256(f"{uid}\n{key}".encode()).hexdigest()[:40]


# -- uploads ------------------------------------------------------------------------------------


def create_upload(api: Api, user: User, body: UploadCreate) -> Upload:
    limit = api.settings.max_input_bytes
    if body.size > limit:
        raise ApiError("too_large", f"the file is {body.size} bytes; the limit is {limit}")
    name = f"uploads/{user.uid}/{uuid.uuid4().hex[:12]}-{body.name}"
    uri = f"gs://{api.settings.media_bucket}/{name}"
    url, headers, expires = api.signer.upload(uri, body.content_type, body.size)
    return Upload(uri=uri, url=url, headers=headers, expires_at=expires)


# -- jobs ---------------------------------------------------------------------------------------


def owned(api: Api, user: User, job_id: str) -> JobDoc:
    """The caller's job ``job_id``; another user's job is answered exactly like a missing one."""
    if not JOB_ID_PATTERN.match(job_id):
        raise ApiError("not_found", "no such job: job ids are 1-128 letters, digits, '_' or '-'")
    snap = api.jobs().document(job_id).get()
    job = read_job(snap.to_dict() or {}) if snap.exists else None
    if job is None or job.uid != user.uid:
        raise ApiError("not_found", f"no job {job_id} of yours")
    return job


def create_job(api: Api, user: User, body: JobCreate, key: str | None) -> tuple[Job, bool]:
    """Write the job document as a client app would, then validate and admit it in-process.

    Returns the job and whether this call created it (``False``: a retry with the same key).

    Raises:
        ApiError: the job was rejected (the job's own error code and message; 429 with
            ``Retry-After`` over quota), or the key was used before for another request.
    """
    job_id = job_id_for(user.uid, key)
    try:
        check_inputs_shape(body.inputs, api.settings)
    except InvalidInput as exc:
        raise ApiError(exc.code, exc.message) from exc
    doc = JobDoc(uid=user.uid, pipeline=body.pipeline, inputs=body.inputs, status=JobStatus.PENDING)
    created = api.deps.jobs.create(job_id, doc)
    if created:
        event = DocumentEvent(path=f"{api.settings.jobs_collection}/{job_id}", fields=doc.to_firestore())
        try:
            handle_job_created(api.deps, event)
        except RETRY_LATER:
            # The document exists: the Firestore trigger (or the sweeper) validates it later.
            log.warning("job %s: validation deferred to the trigger", job_id, exc_info=True)
    job = api.deps.jobs.get(job_id)
    if job is None:
        raise ApiError("unavailable", "the job was created but cannot be read yet; get it again", status=503)
    if not created and (job.pipeline != body.pipeline or not _same_inputs(job.inputs, body.inputs)):
        raise ApiError(
            "idempotency_key_reused",
            f"this Idempotency-Key was used for another request (job {job_id}); use a new key",
        )
    if job.effective_status is JobStatus.REJECTED and job.error:
        raise ApiError.of_job_error(job.error)
    return Job.of(job_id, job), created


def _same_inputs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def wait_for_end(api: Api, job_id: str, seconds: float) -> JobDoc | None:
    """Listen to the job until it is final or ``seconds`` pass; the job as last seen."""
    done = threading.Event()
    latest: list[JobDoc] = []

    def on_snapshot(snaps: list[Any], _changes: Any, _read_time: Any) -> None:
        for snap in snaps:
            if snap.exists:
                job = read_job(snap.to_dict() or {})
                latest.append(job)
                if job.effective_status.is_final:
                    done.set()

    watch = api.jobs().document(job_id).on_snapshot(on_snapshot)
    try:
        done.wait(seconds)
    finally:
        watch.unsubscribe()  # type: ignore[no-untyped-call]
    return latest[-1] if latest else None


def list_jobs(api: Api, user: User, page_size: int, page_token: str | None) -> JobPage:
    query = (
        api.jobs()
        .where(filter=firestore.FieldFilter("uid", "==", user.uid))
        .order_by("createdAt", direction=firestore.Query.DESCENDING)
        .order_by("__name__", direction=firestore.Query.DESCENDING)
    )
    if page_token:
        snap = api.jobs().document(page_token).get() if JOB_ID_PATTERN.match(page_token) else None
        if snap is None or not snap.exists or (snap.to_dict() or {}).get("uid") != user.uid:
            raise ApiError("invalid_request", "pageToken is not one this API gave you")
        query = query.start_after(snap)
    snaps = list(query.limit(page_size + 1).stream())
    jobs = [Job.of(s.id, read_job(s.to_dict() or {})) for s in snaps[:page_size]]
    more = len(snaps) > page_size
    return JobPage(jobs=jobs, next_page_token=jobs[-1].id if more and jobs else None)


def cancel_job(api: Api, user: User, job_id: str) -> Job:
    """Ask the job to stop. A job that has not started ends ``cancelled`` at once; a running one
    stops at its next progress checkpoint."""
    job = owned(api, user, job_id)
    if job.effective_status.is_final:
        raise ApiError("already_final", f"job {job_id} already ended ({job.effective_status.value})")
    api.jobs().document(job_id).update({"cancelRequested": True})
    api.deps.jobs.transition(
        job_id,
        JobStatus.CANCELLED,
        allowed_from=[JobStatus.PENDING, JobStatus.QUEUED],
        patch=Patch().set("cancel_requested", True),
    )
    return Job.of(job_id, owned(api, user, job_id))


def results(api: Api, user: User, job_id: str) -> Results:
    job = owned(api, user, job_id)
    status = job.effective_status
    if status is not JobStatus.SUCCEEDED:
        if job.error is not None:
            raise ApiError.of_job_error(job.error).with_status(409)
        raise ApiError("not_finished", f"job {job_id} is {status.value}: results exist once it has succeeded")
    outputs = dict(job.outputs or {})
    files = []
    for name, uri in sorted((outputs.get("files") or {}).items()):
        url, expires = api.signer.download(uri)
        files.append(ResultFile(name=name, uri=uri, url=url, expires_at=expires))
    return Results(id=job_id, status=status, outputs=outputs, files=files)
