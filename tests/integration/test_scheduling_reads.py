"""The redriver's reads: the interactive lane is read again only when batch work may hide it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from infra.client import Client
from infra.jobs import JobStore
from infra.localstack.stack import LocalStack

pytestmark = pytest.mark.pipelines("inpaint")

COLLECTION = "scheduling-jobs"  # no trigger watches it: this test is the only writer


def test_the_interactive_lane_is_read_again_only_when_batch_work_is_among_the_oldest(
    stack: LocalStack, client: Client, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection = f"lane-reads-{uid}"
    store = JobStore(client.db, collection)
    lane_reads: list[int] = []
    read_lane = store.find_queued_interactive
    monkeypatch.setattr(
        store,
        "find_queued_interactive",
        lambda limit, seen=None: lane_reads.append(limit) or read_lane(limit, seen),
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
