"""At-least-once delivery, exactly-once effect: duplicates of every message are harmless."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from google.cloud import pubsub_v1

from core.contract import JobStatus
from devkit.speech import synthesize
from infra.client import Client
from infra.localstack.stack import LocalStack

pytestmark = pytest.mark.pipelines("transcribe")


@pytest.fixture(scope="module")
def wav(media_dir: Path) -> Path:
    return synthesize("Duplicates must not run twice.", media_dir / "dup.wav")


@pytest.fixture(scope="module")
def gcs_tap(stack: LocalStack) -> pubsub_v1.SubscriberClient:
    """A pull subscription on the Storage notification topic, to capture real notifications."""
    sub = pubsub_v1.SubscriberClient()
    path = sub.subscription_path(stack.config.project, "test-gcs-tap")
    sub.create_subscription(name=path, topic=f"projects/{stack.config.project}/topics/gcs-events")
    return sub


def test_duplicated_storage_notification_creates_one_job(
    stack: LocalStack, client: Client, gcs_tap: pubsub_v1.SubscriberClient, uid: str, wav: Path
) -> None:
    client.upload(wav, uid, pipeline="transcribe")  # no jobId: the id is derived from the object
    path = gcs_tap.subscription_path(stack.config.project, "test-gcs-tap")
    original = None
    deadline = time.monotonic() + 20
    while original is None and time.monotonic() < deadline:
        resp = gcs_tap.pull(subscription=path, max_messages=50, timeout=5)
        for received in resp.received_messages:
            gcs_tap.acknowledge(subscription=path, ack_ids=[received.ack_id])
            if received.message.attributes.get("objectId") == f"uploads/{uid}/transcribe/dup.wav":
                original = received.message
    assert original is not None, "fake-gcs-server published no notification"

    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(stack.config.project, "gcs-events")
    for _ in range(3):  # the same notification, delivered again
        publisher.publish(topic, original.data, **dict(original.attributes)).result()

    time.sleep(3)
    jobs = client.list(uid)
    assert len(jobs) == 1
    job = client.follow(jobs[0][0], timeout=120)
    assert job.status is JobStatus.SUCCEEDED
    assert job.attempt == 1
    assert len(client.list(uid)) == 1


def _push_body(job_id: str, n: int) -> dict[str, object]:
    data = json.dumps({"jobId": job_id, "pipeline": "transcribe"}).encode()
    return {
        "message": {"data": base64.b64encode(data).decode(), "messageId": f"dup-{n}", "attributes": {}},
        "subscription": "projects/demo/subscriptions/jobs-transcribe-gpu",
    }


def test_duplicated_push_runs_the_pipeline_once(
    stack: LocalStack, client: Client, uid: str, wav: Path
) -> None:
    job_id = client.create_job(uid, "transcribe", {"media": client.upload(wav, uid)})
    client.wait_for_status(job_id, {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED})
    url = f"{stack.env['GPU_SERVICE_URL']}/push/transcribe"
    # Two more deliveries of the same message while Pub/Sub's own delivery is running or done.
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda n: httpx.post(url, json=_push_body(job_id, n), timeout=60), range(2)))
    # Each is acked as a duplicate (200), or nacked while the first delivery runs (503: running
    # elsewhere) or while the service is full (429); Pub/Sub redelivers those later.
    assert all(a.status_code in (200, 429, 503) for a in answers), [a.text for a in answers]
    job = client.follow(job_id, timeout=120)
    assert job.status is JobStatus.SUCCEEDED
    assert job.attempt == 1  # claimed once: the pipeline ran once
    # And after the end, a late duplicate is acked without touching the job.
    late = httpx.post(url, json=_push_body(job_id, 9), timeout=30)
    assert late.status_code == 200 and late.json()["detail"] == "final"
    after = client.get(job_id)
    assert after is not None
    # Only the notification dispatcher may still write to the ended job (its delivery record).
    assert after.model_dump(exclude={"notifications"}) == job.model_dump(exclude={"notifications"})


def test_poison_message_is_refused_not_run(stack: LocalStack) -> None:
    url = f"{stack.env['GPU_SERVICE_URL']}/push/transcribe"
    assert httpx.post(url, content=b"not json", timeout=10).status_code == 400
    bad_data = {"message": {"data": base64.b64encode(b"{}").decode(), "messageId": "x"}}
    resp = httpx.post(url, json=bad_data, timeout=10)
    assert resp.status_code == 400 and "not a job message" in resp.json()["error"]
    wrong_route = _push_body("job-1", 0) | {}
    resp = httpx.post(f"{stack.env['GPU_SERVICE_URL']}/push/inpaint", json=wrong_route, timeout=10)
    assert resp.status_code == 400


def test_dead_lettered_message_fails_its_job(stack: LocalStack, client: Client, uid: str) -> None:
    job_id = f"dl-{uid}"
    # A job that is queued but whose deliveries Pub/Sub gave up on.
    client.jobs().document(job_id).set(
        {"uid": uid, "pipeline": "transcribe", "inputs": {}, "status": "queued"}
    )
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(stack.config.project, "jobs-dead-letter")
    body = json.dumps({"jobId": job_id, "pipeline": "transcribe"}).encode()
    publisher.publish(topic, body, CloudPubSubDeadLetterSourceDeliveryCount="5").result()
    job = client.follow(job_id, timeout=30)
    assert job.status is JobStatus.FAILED
    assert job.error and job.error.code == "dead_lettered" and "5 attempts" in job.error.message
