"""Many instances: what each one's redriver reads from Firestore must not grow with the fleet.

Every GPU instance's redriver queries Firestore on each pass (when a slot frees, and every
``REDRIVE_POLL_SECONDS`` when idle). The reads are counted in the Firestore client library
(``devkit/fleet.py``), as ``bench/scale.py`` counts them per job and per idle instance-minute.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from core.contract import JobStatus, QueuedCopy
from core.lifecycle import ClaimOutcome
from core.work import WorkRef
from devkit.fleet import counts, install_firestore_counter
from gpu_service.capacity import Capacity
from gpu_service.pool import ModelPool
from gpu_service.redrive import Redriver
from gpu_service.worker import Worker
from infra.blobs import BlobStore
from infra.bus import Bus
from infra.client import Client
from infra.jobs import JobStore
from infra.localstack.stack import LocalStack
from infra.settings import Settings
from pipelines.registry import catalog

pytestmark = pytest.mark.pipelines("flaky")

PLUGINS = ["devkit.flaky:SPEC", "devkit.flaky:PARTS_SPEC"]


@pytest.fixture
def counted() -> Iterator[None]:
    restore = install_firestore_counter()
    try:
        yield
    finally:
        restore()


def redriver(client: Client, collection: str, served: list[str]) -> Redriver:
    """An instance's redriver on its own jobs collection, not started: passes are run by hand."""
    settings = Settings(worker_id="scale-test", enabled_pipelines=served, jobs_collection=collection)
    pipelines = catalog(served, PLUGINS, settings.pipelines)
    jobs = JobStore(client.db, collection)
    worker = Worker(settings, pipelines, jobs, BlobStore(client.gcs), ModelPool(pipelines), Bus(settings))
    return Redriver(worker, Capacity(2), pipelines.names, after_seconds=0, poll_seconds=60)


def reads_of_one_pass(r: Redriver) -> int:
    before = counts()["reads"]
    assert r.once() == 0  # nothing queued: an idle pass
    return counts()["reads"] - before


def running(client: Client, collection: str, job_id: str, pipeline: str, **extra: object) -> None:
    client.db.collection(collection).document(job_id).set(
        {
            "uid": "someone",
            "pipeline": pipeline,
            "inputs": {},
            "status": "running",
            "updatedAt": datetime(2026, 1, 1, tzinfo=UTC),
            **extra,
        }
    )


def test_an_idle_instance_reads_as_little_however_much_the_rest_of_the_fleet_runs(
    stack: LocalStack, client: Client, uid: str, counted: None
) -> None:
    collection = f"jobs-fleet-{uid}"
    r = redriver(client, collection, ["flaky"])
    alone = reads_of_one_pass(r)
    for n in range(8):  # the other instances' work, running under their leases
        running(client, collection, f"busy-{n}", "flaky")
    assert reads_of_one_pass(r) == alone == 1  # one query that found nothing: one billed read


def test_the_queued_part_of_a_running_multi_part_job_is_still_found(
    stack: LocalStack, client: Client, uid: str
) -> None:
    collection = f"jobs-fleet-{uid}"
    r = redriver(client, collection, ["flaky", "flakyparts"])
    running(
        client,
        collection,
        "parted",
        "flakyparts",
        parts={"a": {"status": "queued"}, "b": {"status": "running"}},
    )
    running(client, collection, "plain", "flaky")
    found = dict(r.worker.jobs.find_runnable(10, r.parted))
    assert set(found) == {"parted"}  # the plain running job has no part to run: not read


def queued(client: Client, collection: str, job_id: str, owner: str, n: int) -> None:
    client.db.collection(collection).document(job_id).set(
        {
            "uid": owner,
            "pipeline": "flaky",
            "inputs": {},
            "status": "queued",
            "queuedAt": datetime(2026, 1, 1, 0, n, tzinfo=UTC),
            "updatedAt": datetime(2026, 1, 1, 0, n, tzinfo=UTC),
        }
    )


def test_a_short_queue_is_read_once_and_a_full_read_also_finds_the_other_users(
    stack: LocalStack, client: Client, uid: str, counted: None
) -> None:
    """Other users' queued work is looked for only when the oldest-queued read was full: a read
    that was not full saw every queued job, so a second query would only bill reads."""
    collection = f"jobs-fleet-{uid}"
    r = redriver(client, collection, ["flaky"])
    for n in range(3):
        queued(client, collection, f"heavy-{n}", "heavy", n)
    before = counts()["queries"]
    found = r.runnable(10)
    assert set(found) == {"heavy-0", "heavy-1", "heavy-2"}
    assert counts()["queries"] - before == 1  # the oldest-queued read only
    for n in range(3, 10):
        queued(client, collection, f"heavy-{n}", "heavy", n)
    queued(client, collection, "light-0", "light", 59)  # younger than the whole heavy backlog
    found = r.runnable(10)
    assert "light-0" in found  # the full read did not hide the light user's job


def test_another_services_older_backlog_does_not_hide_this_instances_queued_job(
    stack: LocalStack, client: Client, uid: str
) -> None:
    """Production splits pipelines between the GPU service and a worker pool: the pool's backlog
    of long jobs, queued first, fills the oldest-queued read of every service instance. The
    instance still finds, and runs, the job of its own pipeline queued after it."""
    collection = f"jobs-fleet-{uid}"
    r = redriver(client, collection, ["flaky"])
    batch = client.db.batch()
    for n in range(12):
        batch.set(
            client.db.collection(collection).document(f"pool-{n:02d}"),
            {
                "uid": f"pool-user-{n}",
                "pipeline": "t2v",
                "inputs": {},
                "status": "queued",
                "queuedAt": datetime(2026, 1, 1, 0, n, tzinfo=UTC),
                "updatedAt": datetime(2026, 1, 1, 0, n, tzinfo=UTC),
            },
        )
    batch.commit()
    client.db.collection(collection).document("mine").set(
        {
            "uid": "someone",
            "pipeline": "flaky",
            "inputs": {"steps": 1, "step_seconds": 0},
            "status": "queued",
            "priority": "interactive",
            "queuedAt": datetime(2026, 1, 1, 1, 0, tzinfo=UTC),
            "updatedAt": datetime(2026, 1, 1, 1, 0, tzinfo=UTC),
        }
    )
    assert r.once() == 1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = JobStore(client.db, collection).get("mine")
        if done is not None and done.status is JobStatus.SUCCEEDED:
            break
        time.sleep(0.05)
    assert done is not None and done.status is JobStatus.SUCCEEDED
    pool = JobStore(client.db, collection).get("pool-00")
    assert pool is not None and pool.status is JobStatus.QUEUED  # not this service's to run


def backlog(client: Client, collection: str, jobs: int, users: int) -> None:
    """``jobs`` queued interactive ``flaky`` jobs of ``users`` users, oldest first, old enough."""
    batch = client.db.batch()
    for n in range(jobs):
        batch.set(
            client.db.collection(collection).document(f"job-{n:02d}"),
            {
                "uid": f"user-{n % users}",
                "pipeline": "flaky",
                "inputs": {"steps": 1, "step_seconds": 0},
                "status": "queued",
                "priority": "interactive",
                "queuedAt": datetime(2026, 1, 1, 0, n, tzinfo=UTC),
                "updatedAt": datetime(2026, 1, 1, 0, n, tzinfo=UTC),
            },
        )
    batch.commit()


def test_a_pass_with_one_free_slot_reads_a_few_jobs_and_its_claim_reads_none(
    stack: LocalStack, client: Client, uid: str, counted: None
) -> None:
    """With a backlog of 20 jobs, an instance with one free slot pays for a handful of documents
    (the oldest queued, and other users' when that read was full), not for a tenth of the queue,
    and runs the one it picks without reading it again."""
    collection = f"jobs-fleet-{uid}"
    r = redriver(client, collection, ["flaky"])
    backlog(client, collection, jobs=20, users=5)
    held = r.capacity.try_acquire("flaky", "someone-else")  # one of the two slots is busy
    assert held is not None and r.capacity.free() == 1
    before = counts()
    assert r.once() == 1
    deadline = time.monotonic() + 60
    while r.capacity.free() < 1 and time.monotonic() < deadline:  # the unit ran, and ended
        time.sleep(0.05)
    spent = counts() - before
    assert spent["reads"] <= 8  # was 22: the 10 oldest, again as the interactive lane, a get
    assert spent["gets"] == 0
    done = JobStore(client.db, collection).get("job-00")
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.attempt == 1


def test_a_job_written_after_the_pass_read_it_is_claimed_as_it_is_now(
    stack: LocalStack, client: Client, uid: str
) -> None:
    """The claim of a job the pass read whole writes against the update time it read: a write
    since (a cancel, another instance's claim) makes it read the job and decide again."""
    collection = f"jobs-fleet-{uid}"
    store = JobStore(client.db, collection)
    backlog(client, collection, jobs=2, users=1)
    seen: dict[str, QueuedCopy] = {}
    assert [job_id for job_id, _ in store.find_runnable(5, (), seen)] == ["job-00", "job-01"]
    first = store.claim(WorkRef("job-00"), "instance-a", 30, 3, queued=seen["job-00"])
    assert first.outcome is ClaimOutcome.CLAIMED
    second = store.claim(WorkRef("job-00"), "instance-b", 30, 3, queued=seen["job-00"])
    assert second.outcome is ClaimOutcome.RUNNING_ELSEWHERE  # the loser of a race runs nothing
    client.db.collection(collection).document("job-01").update({"cancelRequested": True})
    cancelled = store.claim(WorkRef("job-01"), "instance-a", 30, 3, queued=seen["job-01"])
    assert cancelled.outcome is ClaimOutcome.CANCELLED
    after = store.get("job-01")
    assert after is not None and after.status is JobStatus.CANCELLED
