"""The dispatcher's scan reads what is due now, the longest due first, on the emulator.

A user whose endpoint is dead, with more ended jobs than one scan reads, must not hold up another
user's event: their jobs wait out their backoffs without being read. Outboxes written before
``notifications.dueAt`` existed are dated by the one-off :func:`functions.notify.date_undated`.
Each test plays the dispatcher on its own collections (the stack's dispatcher does not scan them).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest

from core.contract import Delivery, JobDoc, JobStatus, Notifications
from core.lifecycle import final_patch
from core.patch import Patch
from devkit.receivers import WebhookReceiver, webhook_receiver
from functions.notify import Dispatcher, date_undated
from infra.jobs import JobStore, firestore_client, to_firestore, utcnow
from infra.localstack.stack import LocalStack
from infra.notify_targets import Endpoint, Secret, TargetStore, new_secret
from infra.settings import Settings

pytestmark = pytest.mark.pipelines("flaky")

#: owed jobs one scan reads (the stack's is larger)
BATCH = 3
#: a failed attempt's wait: long enough that no retry falls due during a test
BACKOFF = [600.0, 600.0]


class _Stores:
    def __init__(self, settings: Settings, receiver: WebhookReceiver) -> None:
        self.run = uuid.uuid4().hex[:8]
        self.settings = settings.model_copy(
            update={
                "jobs_collection": f"due-jobs-{self.run}",
                "notify_targets_collection": f"due-targets-{self.run}",
                "notify_batch": BATCH,
                "notify_backoff_seconds": BACKOFF,
            }
        )
        db = firestore_client(self.settings)
        self.jobs = JobStore(db, self.settings.jobs_collection)
        self.targets = TargetStore(db, self.settings.notify_targets_collection)
        self.receiver = receiver

    def hook(self, uid: str) -> str:
        """A webhook endpoint for ``uid``; its path on the receiver."""
        path, secret = f"/due/{self.run}/{uid}", new_secret()
        self.receiver.secrets[path] = secret
        endpoint = Endpoint(url=self.receiver.url(path), secrets=[Secret(secret=secret)], created_at=utcnow())
        self.targets.update(uid, lambda t: t.webhooks.update({"e1": endpoint}))
        return path

    def ended(self, job_id: str, uid: str, end: Patch | None = None) -> str:
        """A job as the commit that ended it leaves it (or as ``end`` does)."""
        assert self.jobs.create(job_id, JobDoc(uid=uid, pipeline="flaky", status=JobStatus.RUNNING))
        self.jobs.ref(job_id).update(to_firestore(end or final_patch(Patch(), JobStatus.SUCCEEDED)))
        return job_id

    def notes(self, job_id: str) -> Notifications:
        job = self.jobs.get(job_id)
        assert job is not None and job.notifications is not None
        return job.notifications


@pytest.fixture(scope="module")
def receiver(stack: LocalStack) -> Iterator[WebhookReceiver]:
    with webhook_receiver() as running:
        yield running


def test_a_dead_endpoint_with_many_jobs_does_not_hold_up_another_users_event(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    stores = _Stores(settings, receiver)
    hostile, other = f"hostile-{stores.run}", f"other-{stores.run}"
    dead = stores.hook(hostile)
    receiver.script[dead] = ["fail"] * 50
    # Ids that sort before the other user's: a scan in id order would read them first.
    ids = [stores.ended(f"a-{stores.run}-{i}", hostile) for i in range(2 * BATCH)]
    dispatcher = Dispatcher(stores.settings, stores.jobs, stores.targets)
    dispatcher.tick()
    dispatcher.tick()  # each scan tried BATCH of them once: all wait out a 10-minute backoff

    path = stores.hook(other)
    theirs = stores.ended(f"z-{stores.run}", other)
    made = dispatcher.tick()

    got = receiver.for_path(path)
    assert [r.webhook_id for r in got] == [f"evt_{theirs}"], "delivered on the next scan"
    assert got[0].verified and made == 1
    assert stores.notes(theirs).state == "done"
    for job_id in ids:
        notes = stores.notes(job_id)
        assert notes.state == "owed" and notes.deliveries is not None, job_id
        assert notes.deliveries["webhook_e1"].attempts == 1, "tried once, then left to its backoff"
        assert notes.due_at is not None and notes.due_at > utcnow() + timedelta(minutes=5)
    assert len(receiver.for_path(dead)) == len(ids)


def test_a_slow_endpoint_holds_up_only_its_owners_deliveries(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    stores = _Stores(settings, receiver)
    slow_user, other = f"slow-{stores.run}", f"other-{stores.run}"
    slow = stores.hook(slow_user)
    receiver.script[slow] = ["hang"]  # answers after NOTIFY_TIMEOUT_SECONDS: the attempt times out
    stuck = stores.ended(f"a-{stores.run}", slow_user)  # due first: a scan in due order meets it first
    path = stores.hook(other)
    theirs = stores.ended(f"z-{stores.run}", other)
    dispatcher = Dispatcher(stores.settings, stores.jobs, stores.targets)
    scan = threading.Thread(target=dispatcher.tick)
    scan.start()
    deadline = time.monotonic() + 30
    while not receiver.for_path(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    # The other owner's event arrived while the slow endpoint still held its attempt open.
    slow_notes = stores.notes(stuck)
    scan.join(60)
    assert [r.webhook_id for r in receiver.for_path(path)] == [f"evt_{theirs}"]
    assert slow_notes.deliveries is None or slow_notes.deliveries["webhook_e1"].last_status is None, (
        slow_notes
    )
    assert stores.notes(theirs).state == "done"
    timed_out = stores.notes(stuck).deliveries
    assert (
        timed_out
        and timed_out["webhook_e1"].attempts == 1
        and (timed_out["webhook_e1"].last_status or "").startswith("timeout: no answer within")
    )


def test_outboxes_of_an_older_release_are_dated_then_delivered(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    stores = _Stores(settings, receiver)
    uid = f"older-{stores.run}"
    path = stores.hook(uid)
    now = utcnow()
    # As the release before dueAt left them: two just ended, one whose backoff has run out, one
    # still waiting its backoff. More than one page of the walk (BATCH).
    ended = Patch().set("status", JobStatus.SUCCEEDED).set("notifications", Notifications())
    retry = Delivery(
        kind="webhook", attempts=1, last_status="HTTP 500", next_attempt_at=now - timedelta(seconds=1)
    )
    waiting = retry.model_copy(update={"next_attempt_at": now + timedelta(minutes=10)})
    fresh = [stores.ended(f"old-{stores.run}-{i}", uid, ended) for i in range(2)]
    retried = stores.ended(
        f"old-{stores.run}-r",
        uid,
        Patch()
        .set("status", JobStatus.SUCCEEDED)
        .set(
            "notifications",
            Notifications(event_id=f"evt_old-{stores.run}-r", deliveries={"webhook_e1": retry}),
        ),
    )
    later = stores.ended(
        f"old-{stores.run}-w",
        uid,
        Patch()
        .set("status", JobStatus.SUCCEEDED)
        .set(
            "notifications",
            Notifications(event_id=f"evt_old-{stores.run}-w", deliveries={"webhook_e1": waiting}),
        ),
    )
    dispatcher = Dispatcher(stores.settings, stores.jobs, stores.targets)
    assert dispatcher.tick() == 0, "undated: the scan does not see them"

    assert date_undated(stores.settings, stores.jobs) == 4
    assert date_undated(stores.settings, stores.jobs) == 0, "dated once: running it again writes nothing"
    assert stores.notes(later).due_at == waiting.next_attempt_at

    assert dispatcher.tick() == 3
    got = receiver.for_path(path)
    assert sorted(r.webhook_id for r in got) == sorted(f"evt_{j}" for j in [*fresh, retried])
    assert all(r.verified for r in got)
    for job_id in [*fresh, retried]:
        assert stores.notes(job_id).state == "done", job_id
    assert stores.notes(retried).deliveries["webhook_e1"].attempts == 2  # type: ignore[index]
    assert stores.notes(later).state == "owed", "still waiting its backoff"


def test_a_date_that_is_off_is_put_right_once_not_read_by_every_scan(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    stores = _Stores(settings, receiver)
    uid = f"hand-{stores.run}"
    stores.hook(uid)
    now = utcnow()
    # Written by hand: a delivered outbox that kept a date, and a leased one dated as due now.
    leased = Delivery(kind="webhook", attempts=1, next_attempt_at=now + timedelta(minutes=10))
    done = Notifications(state="done", event_id="evt_x", deliveries={}, due_at=now - timedelta(seconds=5))
    off = Notifications(
        event_id="evt_y", deliveries={"webhook_e1": leased}, due_at=now - timedelta(seconds=5)
    )
    stray = stores.ended(f"hand-{stores.run}-done", uid, Patch().set("notifications", done))
    wrong = stores.ended(f"hand-{stores.run}-off", uid, Patch().set("notifications", off))
    dispatcher = Dispatcher(stores.settings, stores.jobs, stores.targets)

    assert dispatcher.tick() == 0 and dispatcher.scanned == 2
    assert stores.notes(stray).due_at is None
    assert stores.notes(wrong).due_at == leased.next_attempt_at
    assert dispatcher.tick() == 0 and dispatcher.scanned == 0, "neither is read again"
