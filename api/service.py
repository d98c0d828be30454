"""What the routes do, as plain functions of the caller and typed bodies (no HTTP here)."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from api.auth import TokenVerifier, User
from api.errors import ApiError
from api.live import LiveStates
from api.models import Job, JobCreate, JobPage, ResultFile, Results, Upload, UploadCreate
from api.shedding import Gate
from api.signing import UrlSigner
from api.watch import JobWatches
from core.contract import JOB_ID_PATTERN, JobDoc, JobStatus, read_job
from core.errors import InvalidInput
from core.patch import Patch
from functions.events import DocumentEvent
from functions.handlers import RETRY_LATER, Deps, check_inputs_shape, handle_job_created

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100
IDEMPOTENCY_KEY_CHARS = 255
#: rejections for a reason that passes: a create retried with the same Idempotency-Key is
#: admitted again once it fits (the job id is not used up by the refusal)
PASSING_REJECTIONS = frozenset({"quota_exceeded"})
REOPEN_ATTEMPTS = 3


@dataclass
class Api:
    deps: Deps
    verifier: TokenVerifier
    signer: UrlSigner
    db: firestore.Client
    #: every follower of a job (waits, event streams, speech) shares one listener per job
    watches: JobWatches = field(init=False)
    #: requests waiting for a job's end (``?wait``, the speech route), per user and in all
    waits: Gate = field(init=False)
    #: open event streams, per user and in all
    streams: Gate = field(init=False)
    #: followed jobs' live state (queue position, estimate, phase)
    live: LiveStates = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        retry = s.api_busy_retry_seconds
        self.watches = JobWatches(
            lambda job_id, callback: self.jobs().document(job_id).on_snapshot(callback),
            s.api_max_listeners,
            retry,
        )
        self.waits = Gate("requests waiting for a job", s.api_max_waits_per_user, s.api_max_waits, retry)
        self.streams = Gate("event streams", s.api_max_streams_per_user, s.api_max_streams, retry)
        self.live = LiveStates(self.db, s)

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

    With an ``Idempotency-Key`` the job id is derived from the caller and the key, so:

    * a retry of the same request finds the same job (``200``, the job as it is now);
    * the key reused for another request is ``409 idempotency_key_reused``;
    * a job with that id that is not the caller's (ids are client-choosable: anyone may create a
      document under a predicted id) is never answered: ``409 idempotency_key_reused``;
    * a job refused for a reason that passes (``quota_exceeded``) does not use the key up: the
      retry, sent after ``Retry-After``, replaces it with a new job that is admitted if it fits
      now (``201``), or is refused again with a fresh ``Retry-After``.

    Raises:
        ApiError: the job was rejected (the job's own error code and message; 429 with
            ``Retry-After`` over quota), or the key was used before for another request.
    """
    job_id = job_id_for(user.uid, key)
    try:
        check_inputs_shape(body.inputs, api.settings)
    except InvalidInput as exc:
        raise ApiError(exc.code, exc.message) from exc
    doc = JobDoc(
        uid=user.uid,
        pipeline=body.pipeline,
        inputs=body.inputs,
        status=JobStatus.PENDING,
        priority=body.priority,
    )
    created = _create(api, job_id, doc)
    for _ in range(REOPEN_ATTEMPTS):
        if created or not _reopen(api, user, job_id, body):
            break
        created = _create(api, job_id, doc)
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
    if job.uid != user.uid:
        raise _key_taken(job_id)
    if not created and not _same_request(job, body):
        raise ApiError(
            "idempotency_key_reused",
            f"this Idempotency-Key was used for another request (job {job_id}); use a new key",
        )
    if job.effective_status is JobStatus.REJECTED and job.error:
        raise ApiError.of_job_error(job.error)
    return Job.of(job_id, job), created


def _create(api: Api, job_id: str, doc: JobDoc) -> bool:
    """Create the job document; ``False``: it exists already.

    Raises:
        ApiError: ``invalid_inputs`` when Firestore cannot store the inputs (an empty key, a
            reserved ``__name__`` key, ...): a client's mistake, not the service's.
    """
    try:
        return api.deps.jobs.create(job_id, doc)
    except gexc.InvalidArgument as exc:
        raise ApiError(
            "invalid_inputs", f"inputs cannot be stored as a job document: {exc.message or exc}"
        ) from exc
    except ValueError as exc:
        # The client library refuses some field names itself before sending anything.
        raise ApiError("invalid_inputs", f"inputs cannot be stored as a job document: {exc}") from exc


def _key_taken(job_id: str) -> ApiError:
    return ApiError(
        "idempotency_key_reused",
        f"the job id this Idempotency-Key gives ({job_id}) is taken by a job that is not yours; use a new key",
    )


def _same_request(job: JobDoc, body: JobCreate) -> bool:
    return job.pipeline == body.pipeline and _same_inputs(job.inputs, body.inputs)


def _reopen(api: Api, user: User, job_id: str, body: JobCreate) -> bool:
    """Remove the caller's job ``job_id`` if this request's retry may replace it: the same request,
    rejected for a reason that passes. The delete is conditional on the document being exactly the
    one read (of concurrent retries one wins; the others find its new job).

    Returns whether the id is free again (for a create).
    """
    ref = api.jobs().document(job_id)
    snap = ref.get()
    if not snap.exists:
        return True
    job = read_job(snap.to_dict() or {})
    if job.uid != user.uid or not _same_request(job, body):
        return False
    passing = job.error is not None and job.error.code in PASSING_REJECTIONS
    if job.effective_status is not JobStatus.REJECTED or not passing:
        return False
    try:
        ref.delete(option=api.db.write_option(last_update_time=snap.update_time))
    except (gexc.FailedPrecondition, gexc.NotFound, gexc.Aborted):
        return True  # another retry replaced it first: the create finds its job
    log.info("job %s: refused for %s, replaced by its retry", job_id, job.error.code if job.error else "?")
    return True


def _same_inputs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


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
