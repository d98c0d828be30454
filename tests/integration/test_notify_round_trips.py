"""What the notification dispatcher costs per ended job, in Firestore calls, on the emulator.

Each test plays the dispatcher on its own collections (the stack's dispatcher does not scan
them), with jobs as the commit that ended them leaves them: final, their end event owed.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from core.contract import JobDoc, JobStatus, Notifications
from core.lifecycle import final_patch
from core.patch import Patch
from devkit.receivers import WebhookReceiver, webhook_receiver
from functions.notify import Dispatcher
from infra import roundtrips
from infra.jobs import JobStore, LastWrite, firestore_client, to_firestore, utcnow
from infra.localstack.stack import LocalStack
from infra.notify_targets import Endpoint, Secret, TargetStore, new_secret
from infra.settings import Settings

pytestmark = pytest.mark.pipelines("flaky")

#: at most this many writes in one commit (Firestore's limit)
COMMIT_WRITES = 500


class _Stores:
    def __init__(self, settings: Settings) -> None:
        run = uuid.uuid4().hex[:8]
        self.run = run
        self.settings = settings.model_copy(
            update={
                "jobs_collection": f"trips-jobs-{run}",
                "notify_targets_collection": f"trips-targets-{run}",
            }
        )
        db = firestore_client(self.settings)
        self.jobs = JobStore(db, self.settings.jobs_collection)
        self.targets = TargetStore(db, self.settings.notify_targets_collection)

    def ended(self, uid: str, n: int) -> list[str]:
        """``n`` jobs of ``uid`` as the commit that ended them leaves them."""
        ids = []
        for i in range(n):
            job_id = f"job-{self.run}-{uid}-{i}"
            assert self.jobs.create(job_id, JobDoc(uid=uid, pipeline="flaky", status=JobStatus.RUNNING))
            end = final_patch(Patch(), JobStatus.SUCCEEDED)
            self.jobs.ref(job_id).update(to_firestore(end))
            ids.append(job_id)
        return ids

    def notes(self, job_id: str) -> Notifications:
        job = self.jobs.get(job_id)
        assert job is not None and job.notifications is not None
        return job.notifications


def _tick(dispatcher: Dispatcher) -> tuple[int, Counter[str]]:
    with roundtrips.counting() as calls:
        made = dispatcher.tick()
    return made, calls


def test_jobs_of_users_without_targets_are_settled_in_a_few_calls(
    stack: LocalStack, settings: Settings
) -> None:
    stores = _Stores(settings)
    ids = [job_id for user in ("a", "b", "c") for job_id in stores.ended(f"quiet-{stores.run}-{user}", 8)]
    dispatcher = Dispatcher(stores.settings, stores.jobs, stores.targets)

    made, calls = _tick(dispatcher)

    assert made == 0, "nothing to send"
    # One query, one read of every owner's targets, one commit per 500 jobs: not a read and a
    # write per job.
    assert calls["firestore"] <= 2 + math.ceil(len(ids) / COMMIT_WRITES), calls
    print(f"no targets: {calls['firestore']} Firestore calls for {len(ids)} ended jobs")
    for job_id in ids:
        notes = stores.notes(job_id)
        assert notes.state == "done" and notes.deliveries == {}, job_id
    assert _tick(dispatcher)[1]["firestore"] == 1, "settled jobs are not read again"


class _WritesAfterTheScan(JobStore):
    """Somebody writes one job between the dispatcher's scan and its commit."""

    victim = ""

    def find_due_known(self, now: datetime, limit: int) -> list[tuple[str, LastWrite]]:
        found = super().find_due_known(now, limit)
        self.ref(self.victim).update({"notifications.redeliveries": 1})
        return found


def test_a_job_written_after_the_scan_is_still_settled_once(stack: LocalStack, settings: Settings) -> None:
    stores = _Stores(settings)
    ids = stores.ended(f"busy-{stores.run}", 5)
    jobs = _WritesAfterTheScan(firestore_client(stores.settings), stores.settings.jobs_collection)
    jobs.victim = ids[2]
    dispatcher = Dispatcher(stores.settings, jobs, stores.targets)

    dispatcher.tick()

    # The batch failed as a whole on the changed job's precondition; each was settled on its own,
    # the changed one decided on what it is now (the other write kept).
    for job_id in ids:
        notes = stores.notes(job_id)
        assert notes.state == "done" and notes.deliveries == {}, job_id
    assert stores.notes(ids[2]).redeliveries == 1


@pytest.fixture(scope="module")
def receiver(stack: LocalStack) -> Any:
    with webhook_receiver() as running:
        yield running


def test_one_webhook_costs_two_writes_per_job(
    stack: LocalStack, settings: Settings, receiver: WebhookReceiver
) -> None:
    stores = _Stores(settings)
    uid, path, secret = f"hooked-{stores.run}", f"/trips/{stores.run}", new_secret()
    receiver.secrets[path] = secret
    stores.targets.update(
        uid,
        lambda t: t.webhooks.update(
            {"e1": Endpoint(url=receiver.url(path), secrets=[Secret(secret=secret)], created_at=utcnow())}
        ),
    )
    ids = stores.ended(uid, 6)
    dispatcher = Dispatcher(stores.settings, stores.jobs, stores.targets)

    made, calls = _tick(dispatcher)

    assert made == len(ids)
    # One query and one read of the targets for all; per job the plan with the attempt's claim,
    # then its outcome: two writes, none read first.
    assert calls["firestore"] <= 2 + 2 * len(ids), calls
    print(f"one webhook: {calls['firestore']} Firestore calls for {len(ids)} ended jobs")
    for job_id in ids:
        notes = stores.notes(job_id)
        assert notes.state == "done" and notes.deliveries is not None
        assert notes.deliveries["webhook_e1"].attempts == 1
    got = receiver.for_path(path)
    assert len(got) == len(ids) and all(r.verified for r in got)
    assert {r.webhook_id for r in got} == {f"evt_{job_id}" for job_id in ids}
