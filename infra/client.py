"""A small client library for apps, scripts and tests: upload inputs, create jobs, follow them.

It uses only the public contract (the job document and the bucket layout), with the ordinary
Google client libraries, so it works the same against the emulators and a real project.
"""

from __future__ import annotations

import mimetypes
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.cloud import firestore, storage  # type: ignore[attr-defined]

from core.contract import FINAL_STATES, JobDoc, JobStatus, read_job
from infra.settings import Settings


class JobTimeout(TimeoutError):
    """The job did not reach a final state in time."""


class Client:
    #: How often :meth:`follow` reads the job itself, besides listening to it.
    RECHECK_SECONDS = 5.0

    def __init__(self, settings: Settings, db: firestore.Client, gcs: storage.Client) -> None:
        self.settings = settings
        self.db = db
        self.gcs = gcs

    @classmethod
    def from_settings(cls, settings: Settings) -> Client:
        from infra.blobs import storage_client
        from infra.jobs import firestore_client

        return cls(settings, firestore_client(settings), storage_client(settings))

    def jobs(self) -> firestore.CollectionReference:
        return self.db.collection(self.settings.jobs_collection)

    def upload(
        self,
        path: Path,
        uid: str,
        *,
        pipeline: str | None = None,
        name: str | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Upload to ``uploads/{uid}/{name}``, or as a drop upload to ``uploads/{uid}/{pipeline}/{name}``
        (which creates a job by itself). Returns the ``gs://`` URI."""
        name = name or path.name
        object_name = f"uploads/{uid}/{pipeline}/{name}" if pipeline else f"uploads/{uid}/{name}"
        blob = self.gcs.bucket(self.settings.media_bucket).blob(object_name)
        if metadata:
            blob.metadata = metadata
        blob.upload_from_filename(
            str(path),
            content_type=content_type or mimetypes.guess_type(name)[0] or "application/octet-stream",
        )
        return f"gs://{self.settings.media_bucket}/{object_name}"

    def create_job(self, uid: str, pipeline: str, inputs: dict[str, Any], job_id: str | None = None) -> str:
        """Create ``jobs/{jobId}`` as a client app does.

        The security rules require ``status: pending`` (so the sweeper can find the job if its
        created-event is ever lost: Firestore cannot query a missing field) and take ``createdAt``
        only as a server timestamp.
        """
        job_id = job_id or uuid.uuid4().hex
        self.jobs().document(job_id).create(
            {
                "uid": uid,
                "pipeline": pipeline,
                "inputs": inputs,
                "status": JobStatus.PENDING.value,
                "createdAt": firestore.SERVER_TIMESTAMP,
            }
        )
        return job_id

    def get(self, job_id: str) -> JobDoc | None:
        snap = self.jobs().document(job_id).get()
        return read_job(snap.to_dict() or {}) if snap.exists else None

    def cancel(self, job_id: str) -> None:
        self.jobs().document(job_id).update({"cancelRequested": True})

    def list(self, uid: str, limit: int = 20) -> list[tuple[str, JobDoc]]:
        query = self.jobs().where(filter=firestore.FieldFilter("uid", "==", uid))
        docs = [(s.id, read_job(s.to_dict() or {})) for s in query.stream()]
        docs.sort(key=lambda d: d[1].created_at.timestamp() if d[1].created_at else 0, reverse=True)
        return docs[:limit]

    def follow(
        self,
        job_id: str,
        on_update: Callable[[JobDoc], None] | None = None,
        timeout: float = 300.0,
    ) -> JobDoc:
        """Listen to ``jobs/{jobId}`` (a Firestore listener, as apps do) until it is final.

        The job may not exist yet (a drop upload with a chosen ``jobId``): the listener waits.

        Raises:
            JobTimeout: if it is not final within ``timeout`` seconds.
        """
        done = threading.Event()
        latest: list[JobDoc] = []

        def seen(job: JobDoc) -> None:
            latest.append(job)
            if on_update:
                on_update(job)
            if job.status in FINAL_STATES:
                done.set()

        def on_snapshot(snaps: list[Any], _changes: Any, _read_time: Any) -> None:
            for snap in snaps:
                if snap.exists:
                    seen(read_job(snap.to_dict() or {}))

        watch = self.jobs().document(job_id).on_snapshot(on_snapshot)
        deadline = time.monotonic() + timeout
        try:
            while not done.wait(max(0.0, min(self.RECHECK_SECONDS, deadline - time.monotonic()))):
                # A listener's stream can stall without an error (seen on a starved machine: a job
                # final for a minute, its listener never told). A plain read now and then makes sure
                # a final state is not missed; the listener stays the fast path.
                job = self.get(job_id)
                if job is not None and job.status in FINAL_STATES and not done.is_set():
                    seen(job)
                    break
                if time.monotonic() >= deadline:
                    status = latest[-1].status if latest else (job.status if job else "absent")
                    raise JobTimeout(f"job {job_id} is still {status} after {timeout:.0f}s")
        finally:
            watch.unsubscribe()  # type: ignore[no-untyped-call]
        return latest[-1]

    def wait_for_status(self, job_id: str, statuses: set[JobStatus], timeout: float = 60.0) -> JobDoc:
        """Poll until the job is in one of ``statuses`` (for scripts that need a mid-run state)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if job and job.status in statuses:
                return job
            time.sleep(0.1)
        raise JobTimeout(f"job {job_id} did not reach {sorted(statuses)} in {timeout:.0f}s")

    def download(self, uri: str, dest: Path) -> Path:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        self.gcs.bucket(bucket).blob(name).download_to_filename(str(dest))
        return dest
