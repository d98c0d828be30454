"""Pull mode lets in enough messages at once for a full batch to form (real Pub/Sub emulator)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.cloud import pubsub_v1
from PIL import Image, ImageDraw

from core.contract import JobMessage, JobStatus
from gpu_service.pool import ModelPool
from gpu_service.pull import PullConsumer, flow_control_messages
from gpu_service.worker import Worker
from infra.blobs import BlobStore
from infra.bus import Bus
from infra.client import Client
from infra.jobs import JobStore
from infra.localstack.stack import LocalStack
from infra.settings import Settings
from pipelines.registry import catalog

pytestmark = pytest.mark.pipelines("inpaint")


def _images(tmp: Path) -> tuple[Path, Path]:
    image, mask = tmp / "tiny.png", tmp / "tiny-mask.png"
    Image.new("RGB", (32, 32), (90, 140, 200)).save(image)
    m = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(m).rectangle((10, 10, 20, 20), fill=255)
    m.save(mask)
    return image, mask


def _run_burst(client: Client, uid: str, tmp: Path, label: str, max_messages: int | None) -> dict[str, float]:
    """Four inpaint jobs published at once to a pull subscription; the batcher's statistics."""
    settings = Settings(
        worker_id=f"pull-{label}",
        enabled_pipelines=["inpaint"],
        max_concurrent_jobs=4,
        batching={"inpaint": {"max_batch": 4, "max_wait_ms": 1500}},
    )
    project = settings.google_cloud_project
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, f"pull-batch-{label}")
    publisher.create_topic(name=topic)
    sub = subscriber.subscription_path(project, f"pull-batch-{label}-gpu")
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=30)

    pipelines = catalog(["inpaint"], (), settings.pipelines)
    pool = ModelPool(pipelines, settings.batching)
    worker = Worker(settings, pipelines, JobStore(client.db), BlobStore(client.gcs), pool, Bus(settings))
    inputs = {
        name: client.upload(path, uid) for name, path in zip(("image", "mask"), _images(tmp), strict=True)
    }
    pins = {}  # what validation records: the worker downloads exactly these generations
    for name, uri in inputs.items():
        blob = client.gcs.bucket(settings.media_bucket).get_blob(uri.split("/", 3)[3])
        pins[name] = {"uri": uri, "generation": str(blob.generation), "size": blob.size}
    ids = [f"pull-{label}-{n}-{uid}" for n in range(4)]
    for job_id in ids:
        client.jobs().document(job_id).set(
            {"uid": uid, "pipeline": "inpaint", "inputs": inputs, "inputFiles": pins, "status": "queued"}
        )
    consumer = PullConsumer(
        worker, sub, max_messages=max_messages or flow_control_messages(settings, "inpaint")
    )
    consumer.start()
    try:
        for job_id in ids:
            message = JobMessage(job_id=job_id, pipeline="inpaint")
            publisher.publish(topic, message.model_dump_json(by_alias=True).encode()).result()
        jobs = [client.follow(j, timeout=60) for j in ids]
    finally:
        consumer.stop()
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 4, [j.error for j in jobs]
    return pool.batch_stats()["inpaint"]


def test_pull_flow_control_admits_a_whole_batch_at_once(
    stack: LocalStack, client: Client, uid: str, tmp_path: Path
) -> None:
    settings = Settings(max_concurrent_jobs=2, batching={"inpaint": {"max_batch": 2}})
    assert flow_control_messages(settings, "inpaint") == 2 and flow_control_messages(settings, "edit") == 2

    stats = _run_burst(client, uid, tmp_path, "flow", None)
    assert stats == {"batches": 1, "jobs": 4, "mean_size": 4.0}
    # What the flow control prevents: a consumer holding one message at a time never batches.
    one_at_a_time = _run_burst(client, uid, tmp_path, "single", max_messages=1)
    assert one_at_a_time == {"batches": 4, "jobs": 4, "mean_size": 1.0}
