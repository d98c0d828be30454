"""The redriver's reads decode each version of a job once, and still see every change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from infra.client import Client
from infra.jobs import JobStore
from infra.localstack.stack import LocalStack

pytestmark = pytest.mark.pipelines("inpaint")

COLLECTION = "scheduling-jobs"  # no trigger watches it: this test is the only writer


def test_an_unchanged_job_is_decoded_once_and_a_changed_one_again(
    stack: LocalStack, client: Client, uid: str
) -> None:
    store = JobStore(client.db, COLLECTION)
    start = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
    ids = [f"sched-{n}-{uid}" for n in range(3)]
    for n, job_id in enumerate(ids):
        client.db.collection(COLLECTION).document(job_id).set(
            {
                "uid": uid,
                "pipeline": "inpaint",
                "inputs": {"image": "gs://b/x.png"},
                "status": "queued",
                "queuedAt": start + timedelta(seconds=n),
                "shareWeight": 1.0,
            }
        )
    first = dict(store.find_runnable(10, parted=set()))
    again = dict(store.find_runnable(10, parted=set()))
    assert set(ids) <= set(first)
    assert all(again[j] is first[j] for j in ids)  # the same versions: decoded once

    client.db.collection(COLLECTION).document(ids[0]).update({"shareWeight": 2.5})
    client.db.collection(COLLECTION).document(ids[1]).update({"status": "running"})
    later = dict(store.find_runnable(10, parted=set()))
    assert later[ids[0]] is not first[ids[0]] and later[ids[0]].share_weight == 2.5
    assert ids[1] not in later  # running now: not the queue's any more
    assert later[ids[2]] is first[ids[2]]
    others = dict(store.find_queued_of_others(["someone-else"], limit=10))
    assert others[ids[0]] is later[ids[0]] and others[ids[2]] is first[ids[2]]


def test_the_interactive_lane_is_read_again_only_when_batch_work_is_among_the_oldest(
    stack: LocalStack, client: Client, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection = f"lane-reads-{uid}"
    store = JobStore(client.db, collection)
    lane_reads: list[int] = []
    read_lane = store.find_queued_interactive
    monkeypatch.setattr(
        store, "find_queued_interactive", lambda limit: lane_reads.append(limit) or read_lane(limit)
    )
    start = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)

    def queue(name: str, priority: str, n: int) -> None:
        client.db.collection(collection).document(f"{name}-{uid}").set(
            {
                "uid": uid,
                "pipeline": "inpaint",
                "inputs": {},
                "status": "queued",
                "priority": priority,
                "queuedAt": start + timedelta(seconds=n),
            }
        )

    for n in range(3):
        queue(f"app{n}", "interactive", n)
    found = dict(store.find_runnable(2, parted=set()))
    assert set(found) == {f"app0-{uid}", f"app1-{uid}"} and lane_reads == []  # the oldest are the lane's

    queue("batch", "batch", -1)  # older than all of them: now the oldest two hide an interactive job
    found = dict(store.find_runnable(2, parted=set()))
    assert lane_reads == [2]
    assert {f"batch-{uid}", f"app0-{uid}", f"app1-{uid}"} <= set(found)
