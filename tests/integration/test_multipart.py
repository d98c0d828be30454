"""Multi-part jobs: prepare, fan out to parts on their own topics, join exactly once.

Uses the ``flakyparts`` stand-in (devkit/flaky.py): parts ``a`` and ``b``, which count their
starts and completions in files, and can be told to fail.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from google.cloud import pubsub_v1

from core.contract import JobMessage, JobStatus
from devkit.flaky import count
from infra.client import Client
from infra.localstack.stack import LocalStack

pytestmark = pytest.mark.pipelines("flakyparts")


def _count(state: Path, job_id: str, what: str) -> int:
    return count(state / f"{job_id}.{what}")


def test_parts_run_in_parallel_and_join_once_under_duplicate_deliveries(
    stack: LocalStack, client: Client, uid: str, flaky_state: Path
) -> None:
    job_id = client.create_job(uid, "flakyparts", {"steps": 20, "step_seconds": 0.05})
    running = client.wait_for_status(job_id, {JobStatus.RUNNING}, timeout=30)
    assert running
    publisher = pubsub_v1.PublisherClient()
    for part in ("a", "b"):  # every part message delivered twice more
        topic = publisher.topic_path(stack.config.project, f"jobs-flakyparts-{part}")
        body = (
            JobMessage(job_id=job_id, pipeline="flakyparts", part=part)
            .model_dump_json(by_alias=True)
            .encode()
        )
        for _ in range(2):
            publisher.publish(topic, body).result()
    seen: list[str] = []
    job = client.follow(job_id, lambda j: seen.append(j.progress.stage if j.progress else ""), timeout=60)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.outputs and job.outputs["a"] == "a:tok" and job.outputs["b"] == "b:tok"
    assert set(job.outputs["files"]) == {"shared.txt", "a.txt", "b.txt"}
    assert job.parts and all(p.status is JobStatus.SUCCEEDED and p.attempt == 1 for p in job.parts.values())
    assert _count(flaky_state, job_id, "prepare") == 1
    assert (
        _count(flaky_state, job_id, "a.completions") == 1
        and _count(flaky_state, job_id, "b.completions") == 1
    )
    assert any(stage.startswith("parts:") for stage in seen)
    assert job.progress and job.progress.fraction == 1.0


def test_a_multi_part_jobs_usage_is_its_prepare_step_and_every_part_summed_into_the_days_roll_up(
    client: Client, uid: str
) -> None:
    job = client.follow(client.create_job(uid, "flakyparts", {"steps": 8, "step_seconds": 0.05}), timeout=60)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.parts and job.usage is not None
    part_seconds = {name: p.usage.gpu_seconds for name, p in job.parts.items() if p.usage is not None}
    # each part ran its model for at least its 8 steps of 0.05 s
    assert set(part_seconds) == {"a", "b"} and all(s >= 0.4 for s in part_seconds.values())
    prepare = job.timings.inference if job.timings and job.timings.inference else 0.0
    assert job.usage.gpu_seconds == pytest.approx(prepare + sum(part_seconds.values()), abs=1e-5)
    # the commit that joined the job added it to the owner's day, as for a single-unit job
    ledger = client.db.collection(client.settings.quotas_collection).document(uid).get().to_dict() or {}
    (day,) = ledger["usage"].values()
    assert day["jobs"] == 1
    assert day["gpuSeconds"] == pytest.approx(job.usage.gpu_seconds, abs=1e-5)
    assert day["pipelines"]["flakyparts"]["gpuSeconds"] == pytest.approx(job.usage.gpu_seconds, abs=1e-5)


def test_a_part_that_fails_fails_the_job_naming_it_and_keeps_the_other(
    client: Client, uid: str, flaky_state: Path
) -> None:
    job = client.follow(client.create_job(uid, "flakyparts", {"fail_part": "b", "steps": 5}), timeout=60)
    assert job.status is JobStatus.FAILED
    assert job.error and job.error.part == "b" and job.error.code == "told_to_fail"
    assert "part 'b' failed" in job.error.message and not job.error.retryable
    assert job.outputs and job.outputs["a"] == "a:tok" and job.outputs["b"] is None


def test_a_transient_part_failure_is_retried(client: Client, uid: str, flaky_state: Path) -> None:
    job_id = client.create_job(uid, "flakyparts", {"flaky_part": "a", "steps": 5})
    job = client.follow(job_id, timeout=60)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.parts and job.parts["a"].attempt == 2 and job.parts["b"].attempt == 1
    assert _count(flaky_state, job_id, "a.completions") == 1


def test_cancelling_a_fanned_out_job_leaves_no_outputs(client: Client, uid: str, flaky_state: Path) -> None:
    job_id = client.create_job(uid, "flakyparts", {"steps": 200, "step_seconds": 0.05})
    for _ in range(100):
        job = client.get(job_id)
        if job and job.parts and any(p.status is JobStatus.RUNNING for p in job.parts.values()):
            break
        time.sleep(0.1)
    client.cancel(job_id)
    job = client.follow(job_id, timeout=30)
    assert job.status is JobStatus.CANCELLED
    assert job.outputs is None  # the document points at nothing from the start
    # The files the prepare step and any finished part wrote are deleted right after the commit.
    prefix = f"results/{uid}/{job_id}/"
    for _ in range(50):
        if not list(client.gcs.list_blobs(client.settings.media_bucket, prefix=prefix)):
            break
        time.sleep(0.1)
    assert not list(client.gcs.list_blobs(client.settings.media_bucket, prefix=prefix))


def test_a_part_whose_worker_died_is_taken_over(
    stack: LocalStack, client: Client, uid: str, flaky_state: Path
) -> None:
    job_id = client.create_job(uid, "flakyparts", {"steps": 40, "step_seconds": 0.05})
    for _ in range(200):
        job = client.get(job_id)
        if job and job.parts and all(p.status is JobStatus.RUNNING for p in job.parts.values()):
            break
        time.sleep(0.05)
    stack.restart_gpu_service()  # SIGKILL mid-part, then start again
    job = client.follow(job_id, timeout=90)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.parts and all(p.attempt == 2 for p in job.parts.values())
    assert _count(flaky_state, job_id, "prepare") == 1  # prepared once, before the kill
    assert (
        _count(flaky_state, job_id, "a.completions") == 1
        and _count(flaky_state, job_id, "b.completions") == 1
    )
