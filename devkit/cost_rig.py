"""An in-process functions handler and GPU worker on private collections of the emulators, with
the ``metered`` stand-in pipeline: what the cost tests and bench/cost.py drive."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.contract import JobDoc, JobMessage, JobStatus
from core.quota import day_of
from core.spec import Catalog
from devkit import metered
from functions.events import DocumentEvent
from functions.handlers import Deps, handle_job_created
from gpu_service.pool import ModelPool
from gpu_service.worker import Worker
from infra.blobs import BlobStore, storage_client
from infra.bus import Bus
from infra.jobs import JobStore, firestore_client
from infra.settings import Batching, Settings


@dataclass
class Rig:
    settings: Settings
    deps: Deps
    worker: Worker
    jobs: JobStore

    def upload(self, uid: str, name: str, data: bytes) -> str:
        blob = storage_client(self.settings).bucket(self.settings.media_bucket).blob(f"uploads/{uid}/{name}")
        blob.upload_from_string(data, content_type="application/octet-stream")
        return f"gs://{self.settings.media_bucket}/uploads/{uid}/{name}"

    def submit(self, uid: str, inputs: dict[str, Any], **extra: Any) -> tuple[str, JobStatus | None]:
        job_id = f"c{uuid.uuid4().hex[:12]}"
        job = JobDoc(uid=uid, pipeline="metered", inputs=inputs, status=JobStatus.PENDING, **extra)
        assert self.jobs.create(job_id, job)
        fields = self.jobs.ref(job_id).get().to_dict() or {}
        moved = handle_job_created(
            self.deps, DocumentEvent(path=f"{self.settings.jobs_collection}/{job_id}", fields=fields)
        )
        return job_id, moved

    def run(self, *job_ids: str) -> None:
        """Run the jobs at once (so that they meet in one batched call)."""
        threads = [
            threading.Thread(target=self.worker.process, args=(JobMessage(job_id=j, pipeline="metered"),))
            for j in job_ids
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)

    def job(self, job_id: str) -> JobDoc:
        found = self.jobs.get(job_id)
        assert found is not None
        return found

    def day(self, uid: str) -> dict[str, Any]:
        ledger = (
            firestore_client(self.settings).collection(self.settings.quotas_collection).document(uid).get()
        )
        data = ledger.to_dict() or {}
        day: dict[str, Any] = data.get("usage", {}).get(day_of(datetime.now(UTC)), {})
        return {**day, "active": data.get("active", {})}


def make_rig(base: Settings, suffix: str, **updates: Any) -> Rig:
    settings = base.model_copy(
        update={
            "jobs_collection": f"cost-jobs-{suffix}",
            "quotas_collection": f"cost-quotas-{suffix}",
            "max_concurrent_jobs": 4,
            "batching": {"metered": Batching(max_batch=4, max_wait_ms=400)},
            "reuse_pipelines": ["metered"],
            **updates,
        }
    )
    catalog = Catalog(specs={"metered": metered.SPEC}, installed=frozenset({"metered"}))
    jobs = JobStore(firestore_client(settings), settings.jobs_collection, settings.quotas_collection)
    blobs = BlobStore(storage_client(settings))
    deps = Deps(settings, catalog, jobs, blobs, Bus(settings))
    worker = Worker(settings, catalog, jobs, blobs, ModelPool(catalog, settings.batching, None))
    return Rig(settings, deps, worker, jobs)
