"""A message redelivered for a job this GPU service already ended costs it no Firestore call.

In a burst the redriver runs queued jobs straight from Firestore while their messages wait in
Pub/Sub's backoff; each message then arrives for a job that has ended. The instance that ended
it acks that duplicate from what it remembers; any other instance still reads the job (a
refused write against the message's copy, then the read that decides).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from core.contract import JobMessage, JobStatus
from core.lifecycle import Claim, ClaimOutcome, Delivered, Ending, redeliver
from core.patch import Patch
from core.quota import QuotaPolicy
from gpu_service.pool import ModelPool
from gpu_service.worker import Worker
from infra import roundtrips
from infra.blobs import BlobStore
from infra.bus import Bus
from infra.client import Client
from infra.jobs import JobStore, LastWrite
from infra.localstack.stack import LocalStack
from infra.settings import Settings
from pipelines.registry import catalog

pytestmark = pytest.mark.pipelines("inpaint")

COLLECTION = "ended-here-jobs"  # no trigger watches it: this test is the only writer


def _worker(client: Client, name: str, flaky_state: Path) -> Worker:
    settings = Settings(jobs_collection=COLLECTION, enabled_pipelines=["flaky"], worker_id=name)
    pipelines = catalog(["flaky"], ["devkit.flaky:SPEC"], {"flaky": {"state_dir": str(flaky_state)}})
    store = JobStore(client.db, COLLECTION, settings.quotas_collection)
    return Worker(settings, pipelines, store, BlobStore(client.gcs), ModelPool(pipelines), Bus(settings))


def _counted(
    caplog: pytest.LogCaptureFixture, job_id: str, deliver: Callable[[], Delivered]
) -> tuple[Delivered, Counter[str]]:
    """A delivery's result, and the round trips the worker logged for it."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gpu_service.worker"):
        result = deliver()
    return result, roundtrips.from_logs(caplog.messages, {job_id})[job_id]


def test_a_redelivery_of_a_job_ended_here_is_acked_without_a_call(
    stack: LocalStack, client: Client, uid: str, flaky_state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    here, elsewhere = _worker(client, "here", flaky_state), _worker(client, "elsewhere", flaky_state)
    job_id = f"ended-{uid}"
    client.db.collection(COLLECTION).document(job_id).set(
        {"uid": uid, "pipeline": "flaky", "inputs": {"steps": 1, "step_seconds": 0}, "status": "pending"}
    )
    queued = LastWrite()
    moved, _ = here.jobs.admit(job_id, uid, "flaky", QuotaPolicy(), Patch().set("attempt", 0), queued)
    assert moved is JobStatus.QUEUED
    pushed = JobMessage(job_id=job_id, pipeline="flaky", uid=uid, queued=queued.copy())

    job = here.jobs.get(job_id)
    assert job is not None
    ended = here.process(JobMessage.of(job_id, job))  # the redriver's: no copy, the claim reads
    assert isinstance(ended, Ending) and ended.status is JobStatus.SUCCEEDED

    again = _counted(caplog, job_id, lambda: here.process(pushed))  # the functions' message, at last
    assert again[0] == Claim(ClaimOutcome.FINAL) and not redeliver(again[0])
    assert again[1]["firestore"] == 0

    other = _counted(caplog, job_id, lambda: elsewhere.process(pushed))  # an instance that did not end it
    assert isinstance(other[0], Claim) and other[0].outcome is ClaimOutcome.FINAL
    assert other[1]["firestore"] == 2  # the refused write, then the read that decided
    stored = here.jobs.get(job_id)
    assert stored is not None and stored.status is JobStatus.SUCCEEDED and stored.attempt == 1
