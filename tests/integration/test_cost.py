"""What each job cost, on the emulators: usage in the ending commit, the daily roll-up, budgets,
the maximum run time, reuse of a finished result (never across users) and per-job retention.

The functions' handler and the GPU worker run in this process on private collections, with the
``metered`` stand-in pipeline (devkit/metered.py), whose model time is known."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from core.contract import JobStatus
from core.quota import QuotaPolicy
from core.routes import route
from devkit.cost_rig import Rig, make_rig
from infra.blobs import storage_client
from infra.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rig(settings: Settings) -> Iterator[Rig]:
    publisher = pubsub_v1.PublisherClient()
    # the jobs' topic exists (nothing subscribes: this process runs them)
    with contextlib.suppress(gexc.AlreadyExists):
        publisher.create_topic(
            name=publisher.topic_path(settings.google_cloud_project, route("metered").topic)
        )
    yield make_rig(settings, uuid.uuid4().hex[:8])


def test_each_job_carries_its_usage_and_the_days_roll_up_is_their_sum(rig: Rig, uid: str) -> None:
    ids = [rig.submit(uid, {"seconds": 0.3, "work": w, "label": f"w{w}"})[0] for w in (1, 1, 2, 4)]
    rig.run(*ids)
    jobs = [rig.job(j) for j in ids]
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 4
    usages = [j.usage for j in jobs]
    assert all(u is not None and u.gpu_seconds > 0 and u.model == "metered-1" for u in usages)
    # the jobs that shared a call split it by work, and their shares sum to the call's time
    calls: dict[float, list[Any]] = {}
    for u in usages:
        assert u is not None and u.batch is not None
        calls.setdefault(u.batch.seconds, []).append(u)
    for seconds, members in calls.items():
        assert sum(u.gpu_seconds for u in members) == pytest.approx(seconds, abs=1e-5)
        units = {u.batch.work: u.gpu_seconds for u in members}
        if 1.0 in units and 4.0 in units:
            assert units[4.0] == pytest.approx(4 * units[1.0], rel=1e-3)
    day = rig.day(uid)
    assert day["jobs"] == 4
    assert day["gpuSeconds"] == pytest.approx(sum(u.gpu_seconds for u in usages if u), abs=1e-5)
    assert day["pipelines"]["metered"]["jobs"] == 4
    assert day["active"] == {}  # the ending commit also took each job off the unfinished list


def test_a_job_over_the_days_gpu_budget_is_rejected_before_it_runs(rig: Rig, uid: str) -> None:
    tight = make_rig(rig.settings, uuid.uuid4().hex[:8], quotas=QuotaPolicy(gpu_seconds_daily=0.5))
    first, moved = tight.submit(uid, {"seconds": 0.4, "label": "first"})
    assert moved is JobStatus.QUEUED
    tight.run(first)
    assert tight.job(first).status is JobStatus.SUCCEEDED
    # ~0.4 s used; the next one is estimated at the mean (~0.4 s): over the 0.5 s budget
    second, moved = tight.submit(uid, {"seconds": 0.4, "label": "second"})  # not a reuse
    assert moved is JobStatus.REJECTED
    job = tight.job(second)
    assert job.error is not None and job.error.code == "budget_exceeded"
    assert job.error.retry_after_seconds is not None and job.error.retry_after_seconds > 0
    assert job.usage is None and job.started_at is None  # never ran


def test_a_job_past_its_maximum_run_time_is_stopped_with_a_named_error(rig: Rig, uid: str) -> None:
    capped = make_rig(rig.settings, uuid.uuid4().hex[:8], pipeline_max_run_seconds={"metered": 0.3})
    job_id, _ = capped.submit(uid, {"seconds": 20})
    capped.run(job_id)
    job = capped.job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.code == "max_run_time_exceeded"
    assert job.usage is not None and job.usage.gpu_seconds < 20  # charged for what it ran, not more
    assert capped.day(uid)["jobs"] == 1


def test_the_same_content_again_is_reused_at_once_and_never_for_another_user(rig: Rig, uid: str) -> None:
    data = f"the same bytes {uuid.uuid4()}".encode()
    first, _ = rig.submit(
        uid, {"files": {"in": rig.upload(uid, "a.bin", data)}, "seconds": 0.2, "label": "x"}
    )
    rig.run(first)
    original = rig.job(first)
    assert original.status is JobStatus.SUCCEEDED and original.reuse_key

    # the same content under another name, the same inputs: done at once, with the same outputs
    again, moved = rig.submit(
        uid, {"files": {"in": rig.upload(uid, "b.bin", data)}, "seconds": 0.2, "label": "x"}
    )
    assert moved is JobStatus.SUCCEEDED
    reused = rig.job(again)
    assert reused.reused_from == first and reused.outputs == original.outputs
    assert reused.usage is not None and reused.usage.gpu_seconds == 0 and reused.usage.load_seconds == 0
    assert rig.day(uid)["reused"] == 1

    # other inputs, or other content: run again
    _, moved = rig.submit(
        uid, {"files": {"in": rig.upload(uid, "c.bin", data)}, "seconds": 0.2, "label": "y"}
    )
    assert moved is JobStatus.QUEUED
    _, moved = rig.submit(
        uid, {"files": {"in": rig.upload(uid, "d.bin", data + b"!")}, "seconds": 0.2, "label": "x"}
    )
    assert moved is JobStatus.QUEUED

    # another user with the very same content and inputs: never someone else's result
    other = f"user-{uuid.uuid4().hex[:10]}"
    theirs, moved = rig.submit(
        other, {"files": {"in": rig.upload(other, "a.bin", data)}, "seconds": 0.2, "label": "x"}
    )
    assert moved is JobStatus.QUEUED and rig.job(theirs).reused_from is None


def test_retention_days_set_the_result_objects_custom_time(rig: Rig, uid: str) -> None:
    kept, _ = rig.submit(uid, {"seconds": 0.05, "label": "keep"}, retention_days=3)
    plain, _ = rig.submit(uid, {"seconds": 0.05, "label": "plain"})
    rig.run(kept, plain)
    bucket = storage_client(rig.settings).bucket(rig.settings.media_bucket)

    def custom_time(job_id: str) -> datetime | None:
        uri = (rig.job(job_id).outputs or {})["files"]["result.txt"]
        blob = bucket.get_blob(uri.split("/", 3)[3])
        assert blob is not None
        value: datetime | None = blob.custom_time
        return value

    expires = custom_time(kept)
    assert expires is not None
    assert datetime.now(UTC) + timedelta(days=2) < expires < datetime.now(UTC) + timedelta(days=4)
    assert custom_time(plain) is None


def test_retention_longer_than_the_buckets_ttl_is_rejected(rig: Rig, uid: str) -> None:
    job_id, moved = rig.submit(uid, {"seconds": 0.05}, retention_days=rig.settings.results_ttl_days + 1)
    assert moved is JobStatus.REJECTED
    error = rig.job(job_id).error
    assert error is not None and error.code == "invalid_retention"
