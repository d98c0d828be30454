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
