"""Exactly-once effect on at-least-once delivery: leases, retries, cancellation, crashes, shutdown.

These use the ``flaky`` stand-in pipeline (devkit/flaky.py), which counts its starts and
completions per job in files that survive the service being killed.
"""

from __future__ import annotations

import base64
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.cloud import firestore, pubsub_v1

from core.contract import JobDoc, JobMessage, JobStatus
from core.lifecycle import ClaimOutcome, Ending, LeaseLost
from core.work import WorkRef
from devkit.flaky import count
from functions.sweeper import sweep
from infra.blobs import BlobStore
from infra.bus import Bus
from infra.client import Client
from infra.jobs import JobStore, firestore_client, utcnow
from infra.localstack.stack import LocalStack
from infra.settings import Settings
from pipelines.registry import catalog
from tests.integration.conftest import untriggered_deps

pytestmark = pytest.mark.pipelines("flaky")


def _flaky(client: Client, uid: str, **inputs: Any) -> str:
    return client.create_job(uid, "flaky", inputs)


def _starts(state: Path, job_id: str) -> int:
    return count(state / f"{job_id}.starts")


def _completions(state: Path, job_id: str) -> int:
    return count(state / f"{job_id}.completions")


def _result_objects(client: Client, uid: str, job_id: str) -> list[str]:
    blobs = client.gcs.list_blobs(client.settings.media_bucket, prefix=f"results/{uid}/{job_id}/")
    return [b.name for b in blobs]


def test_transient_failures_are_retried_until_success(client: Client, uid: str, flaky_state: Path) -> None:
    job_id = _flaky(client, uid, steps=2, fail_times=2)
    job = client.follow(job_id, timeout=60)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.attempt == 3 and _starts(flaky_state, job_id) == 3
    assert _completions(flaky_state, job_id) == 1
    assert job.error is None and "lastError" not in job.to_firestore()
    # Only the successful attempt's files exist.
    assert _result_objects(client, uid, job_id) == [f"results/{uid}/{job_id}/3/result.txt"]


def test_retryable_errors_give_up_after_max_attempts(client: Client, uid: str, flaky_state: Path) -> None:
    job = client.follow(_flaky(client, uid, fail_times=20), timeout=90)
    assert job.status is JobStatus.FAILED
    assert job.error and job.error.code == "flaky" and not job.error.retryable
    assert "after 5 attempts" in job.error.message
    assert job.attempt == 5


def test_permanent_error_fails_at_once(client: Client, uid: str, flaky_state: Path) -> None:
    job_id = _flaky(client, uid, fail_permanently=True)
    job = client.follow(job_id, timeout=30)
    assert job.status is JobStatus.FAILED and job.attempt == 1
    assert job.error and job.error.code == "told_to_fail" and not job.error.retryable


def test_running_job_is_cancelled_at_its_next_checkpoint(client: Client, uid: str, flaky_state: Path) -> None:
    job_id = _flaky(client, uid, steps=200, step_seconds=0.05)
    client.wait_for_status(job_id, {JobStatus.RUNNING}, timeout=30)
    time.sleep(0.5)
    client.cancel(job_id)
    job = client.follow(job_id, timeout=30)
    assert job.status is JobStatus.CANCELLED  # not succeeded: it stopped before its 200 steps
    assert _completions(flaky_state, job_id) == 0
    assert _result_objects(client, uid, job_id) == []  # no partial outputs
    assert job.error is None


def test_queued_job_cancelled_before_it_starts_never_runs(
    stack: LocalStack, client: Client, uid: str, flaky_state: Path
) -> None:
    job_id = f"cq-{uid}"
    client.jobs().document(job_id).set(
        {"uid": uid, "pipeline": "flaky", "inputs": {}, "status": "queued", "cancelRequested": True}
    )
    Bus(client.settings).publish_job(JobMessage(job_id=job_id, pipeline="flaky"))
    job = client.follow(job_id, timeout=30)
    assert job.status is JobStatus.CANCELLED
    assert _starts(flaky_state, job_id) == 0


def test_worker_killed_mid_run_is_taken_over(
    stack: LocalStack, client: Client, uid: str, flaky_state: Path
) -> None:
    job_id = _flaky(client, uid, steps=40, step_seconds=0.05)
    client.wait_for_status(job_id, {JobStatus.RUNNING}, timeout=30)
    time.sleep(0.5)
    stack.restart_gpu_service()  # SIGKILL, then start again
    job = client.follow(job_id, timeout=90)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.attempt == 2
    assert _starts(flaky_state, job_id) == 2 and _completions(flaky_state, job_id) == 1
    assert _result_objects(client, uid, job_id) == [f"results/{uid}/{job_id}/2/result.txt"]


def test_sigterm_sends_running_jobs_back_to_the_queue_at_once(
    stack: LocalStack, client: Client, uid: str, flaky_state: Path
) -> None:
    job_id = _flaky(client, uid, steps=200, step_seconds=0.05)
    client.wait_for_status(job_id, {JobStatus.RUNNING}, timeout=30)
    time.sleep(0.5)
    stack.kill("gpu_service", signal.SIGTERM)
    requeued = client.wait_for_status(job_id, {JobStatus.QUEUED}, timeout=10)
    # Back in the queue by the drain ("preempted"), not by the sweeper after the lease expired
    # ("worker_lost"), and the attempt is given back.
    assert requeued.attempt == 0
    assert requeued.to_firestore()["lastError"]["code"] == "preempted"
    stack.restart_gpu_service()
    job = client.follow(job_id, timeout=90)
    assert job.status is JobStatus.SUCCEEDED and job.attempt == 1
    assert _completions(flaky_state, job_id) == 1


def test_at_capacity_a_push_waits_for_a_slot_instead_of_being_turned_away(
    stack: LocalStack, client: Client, uid: str
) -> None:
    busy = [_flaky(client, uid, steps=30, step_seconds=0.05) for _ in range(2)]  # MAX_CONCURRENT_JOBS=2
    for job_id in busy:
        client.wait_for_status(job_id, {JobStatus.RUNNING}, timeout=30)
    job_id = f"bp-{uid}"
    client.jobs().document(job_id).set({"uid": uid, "pipeline": "flaky", "inputs": {}, "status": "queued"})
    body = JobMessage(job_id=job_id, pipeline="flaky").model_dump_json(by_alias=True)
    envelope = {"message": {"data": base64.b64encode(body.encode()).decode(), "messageId": "bp"}}
    # A 429 here would make Pub/Sub back off this subscription while the slots free up in seconds.
    resp = httpx.post(f"{stack.env['GPU_SERVICE_URL']}/push/flaky", json=envelope, timeout=60)
    assert resp.status_code == 200 and resp.json()["detail"] == "succeeded"
    assert client.follow(job_id, timeout=10).status is JobStatus.SUCCEEDED


def test_a_queued_job_nobody_announces_runs_as_soon_as_a_slot_is_idle(
    stack: LocalStack, client: Client, uid: str
) -> None:
    # Its message lost (or in a long Pub/Sub backoff): the service finds it in Firestore.
    health = httpx.get(f"{stack.env['GPU_SERVICE_URL']}/healthz", timeout=10).json()
    job_id = f"rd-{uid}"
    client.jobs().document(job_id).set(
        {
            "uid": uid,
            "pipeline": "flaky",
            "inputs": {},
            "status": "queued",
            "queuedAt": firestore.SERVER_TIMESTAMP,
        }
    )
    job = client.follow(job_id, timeout=30)
    assert job.status is JobStatus.SUCCEEDED and job.attempt == 1
    after = httpx.get(f"{stack.env['GPU_SERVICE_URL']}/healthz", timeout=10).json()
    assert after["redriven"] > health["redriven"]


def test_a_worker_that_lost_its_lease_cannot_commit(stack: LocalStack, client: Client, uid: str) -> None:
    store = JobStore(client.db, client.settings.jobs_collection)
    job_id = f"lease-{uid}"
    ref = WorkRef(job_id)
    client.jobs().document(job_id).set({"uid": uid, "pipeline": "none", "inputs": {}, "status": "queued"})
    first = store.claim(ref, "worker-a", lease_seconds=0.5, max_attempts=5)
    assert first.outcome is ClaimOutcome.CLAIMED and first.attempt == 1
    assert store.claim(ref, "worker-b", 30, 5).outcome is ClaimOutcome.RUNNING_ELSEWHERE
    time.sleep(0.8)  # worker-a paused past its lease
    second = store.claim(ref, "worker-b", 30, 5)
    assert second.outcome is ClaimOutcome.CLAIMED and second.attempt == 2
    with pytest.raises(LeaseLost):
        store.heartbeat(ref, "worker-a", 1, 30)
    with pytest.raises(LeaseLost):
        store.finish(ref, "worker-a", 1, Ending(JobStatus.SUCCEEDED, outputs={"from": "a"}))
    store.finish(ref, "worker-b", 2, Ending(JobStatus.SUCCEEDED, outputs={"from": "b"}))
    job = client.get(job_id)
    assert job and job.status is JobStatus.SUCCEEDED and job.outputs == {"from": "b"}
    with pytest.raises(LeaseLost):  # and nothing moves a final job
        store.finish(ref, "worker-b", 2, Ending(JobStatus.FAILED))


def test_sweeper_validates_a_pending_job_whose_trigger_never_ran(stack: LocalStack, uid: str) -> None:
    # A collection with no trigger stands in for a lost Firestore event.
    deps = untriggered_deps("jobs-no-trigger")
    db = firestore_client(deps.settings)
    db.collection("jobs-no-trigger").document(f"p-{uid}").set(
        {"uid": uid, "pipeline": "flaky", "inputs": {}, "status": "pending"}
    )
    db.collection("jobs-no-trigger").document(f"bad-{uid}").set(
        {"uid": uid, "pipeline": "nope", "inputs": {}, "status": "pending"}
    )
    assert not sweep(deps).revalidated  # too recent: its trigger may still be on the way
    # A sweep once they are older than STALE_PENDING_SECONDS: its clock, not a sleep, moves on.
    later = utcnow() + timedelta(seconds=deps.settings.stale_pending_seconds + 0.5)
    report = sweep(deps, now=later)
    assert {f"p-{uid}", f"bad-{uid}"} <= set(report.revalidated)
    assert deps.jobs.get(f"p-{uid}").status is JobStatus.QUEUED  # type: ignore[union-attr]
    bad = deps.jobs.get(f"bad-{uid}")
    assert bad and bad.status is JobStatus.REJECTED and bad.error and bad.error.code == "unknown_pipeline"


def test_pull_consumer_runs_jobs_with_the_same_claim_and_commit(
    stack: LocalStack, client: Client, uid: str, flaky_state: Path
) -> None:
    from gpu_service.pool import ModelPool
    from gpu_service.pull import PullConsumer
    from gpu_service.worker import Worker

    settings = Settings(worker_id="pull-worker", enabled_pipelines=["flaky"])
    project = settings.google_cloud_project
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, "pull-test")
    publisher.create_topic(name=topic)
    sub = subscriber.subscription_path(project, "pull-test-gpu")
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=10)

    pipelines = catalog(["flaky"], ["devkit.flaky:SPEC"], settings.pipelines)
    worker = Worker(
        settings, pipelines, JobStore(client.db), BlobStore(client.gcs), ModelPool(pipelines), Bus(settings)
    )
    consumer = PullConsumer(worker, sub, max_messages=2)
    consumer.start()
    try:
        ids = []
        for n in range(3):
            job_id = f"pull-{n}-{uid}"
            ids.append(job_id)
            client.jobs().document(job_id).set(
                {
                    "uid": uid,
                    "pipeline": "flaky",
                    "inputs": {"steps": 5, "fail_times": 1 if n == 0 else 0},
                    "status": "queued",
                }
            )
            for _ in range(2):  # every message delivered twice
                publisher.publish(
                    topic, JobMessage(job_id=job_id, pipeline="flaky").model_dump_json(by_alias=True).encode()
                ).result()
        jobs: list[JobDoc] = [client.follow(j, timeout=60) for j in ids]
    finally:
        consumer.stop()
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 3
    assert all(j.to_firestore()["runtime"]["worker"] == "pull-worker" for j in jobs)
    assert jobs[0].attempt == 2  # retried after its transient failure (a nack)
    assert [_completions(flaky_state, j) for j in ids] == [1, 1, 1]
