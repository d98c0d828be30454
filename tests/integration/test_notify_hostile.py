"""The dispatcher against hostile endpoints, on the emulator: owners whose backlog fills the
scan, an endpoint that answers a byte at a time, endpoints that hang, and a scan that runs out of
its tick's time. Each test plays the dispatcher on its own collections (the stack's dispatcher
does not scan them).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from core.contract import Delivery, JobDoc, JobStatus, Notifications
from core.lifecycle import final_patch
from core.patch import Patch
from devkit.receivers import WebhookReceiver, webhook_receiver
from functions.notify import Dispatcher
from infra.jobs import JobStore, firestore_client, to_firestore, utcnow
from infra.localstack.stack import LocalStack
from infra.notify_targets import Endpoint, Secret, TargetStore, new_secret
from infra.settings import Settings

pytestmark = pytest.mark.pipelines("flaky")

#: a failed attempt's wait: long enough that no retry falls due during a test
BACKOFF = [600.0, 600.0]


class _Stores:
    def __init__(self, settings: Settings, receiver: WebhookReceiver, **update: Any) -> None:
        self.run = uuid.uuid4().hex[:8]
        self.settings = settings.model_copy(
            update={
                "jobs_collection": f"hostile-jobs-{self.run}",
                "notify_targets_collection": f"hostile-targets-{self.run}",
                "notify_backoff_seconds": BACKOFF,
                **update,
            }
        )
        db = firestore_client(self.settings)
        self.jobs = JobStore(db, self.settings.jobs_collection)
        self.targets = TargetStore(db, self.settings.notify_targets_collection)
        self.receiver = receiver

    def hook(self, uid: str, url: str | None = None) -> str:
        """A webhook endpoint for ``uid`` (on the receiver unless ``url``); its path there."""
        path, secret = f"/hostile/{self.run}/{uid}", new_secret()
        self.receiver.secrets[path] = secret
        endpoint = Endpoint(
            url=url or self.receiver.url(path), secrets=[Secret(secret=secret)], created_at=utcnow()
        )
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

    def delivery(self, job_id: str) -> Delivery | None:
        deliveries = self.notes(job_id).deliveries
        return None if deliveries is None else deliveries.get("webhook_e1")


@pytest.fixture(scope="module")
def receiver(stack: LocalStack) -> Iterator[WebhookReceiver]:
    with webhook_receiver(hang_seconds=8) as running:
        yield running


def test_owners_whose_backlog_fills_the_scan_do_not_keep_other_owners_out(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    stores = _Stores(settings, receiver, notify_batch=3)
    first, second, other = f"first-{stores.run}", f"second-{stores.run}", f"other-{stores.run}"
    for uid in (first, second):
        receiver.script[stores.hook(uid)] = ["fail"] * 10
    path = stores.hook(other)
    # Due in this order: each backlog alone fills a scan of 3, the other owner's job comes last.
    firsts = [stores.ended(f"a-{stores.run}-{i}", first) for i in range(4)]
    seconds = [stores.ended(f"b-{stores.run}-{i}", second) for i in range(4)]
    theirs = stores.ended(f"c-{stores.run}", other)
    dispatcher = Dispatcher(stores.settings, stores.jobs, stores.targets)

    made = dispatcher.tick()

    got = receiver.for_path(path)
    assert [r.webhook_id for r in got] == [f"evt_{theirs}"], "reached in the same scan"
    assert got[0].verified and stores.notes(theirs).state == "done"
    # Every owner had a turn: a scan's worth of each backlog was tried, the rest is still due.
    for backlog in (firsts, seconds):
        tried = [stores.delivery(job_id) for job_id in backlog[:3]]
        assert all(d is not None and d.attempts == 1 and d.last_status == "HTTP 500" for d in tried), tried
        assert stores.notes(backlog[3]).deliveries is None, "left for the next scan"
    assert made == 7 and dispatcher.scanned == 7


class _Dribbler:
    """An endpoint on 127.0.0.1 that reads the request, then answers ``200`` one byte every
    ``every`` seconds, and notes whether the caller hung up before the answer was complete."""

    ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"

    def __init__(self, every: float) -> None:
        self.every = every
        self.requests = 0
        self.hung_up = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with self._server:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                self.requests += 1
                conn.settimeout(30)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096)
                try:
                    for byte in self.ANSWER:
                        conn.sendall(bytes([byte]))
                        time.sleep(self.every)
                except OSError:
                    self.hung_up.set()

    def close(self) -> None:
        self._server.close()
        self._thread.join(30)


def test_an_endpoint_that_answers_a_byte_at_a_time_times_out_as_a_whole_attempt(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    # Each byte comes well within the timeout: only a bound on the whole attempt ends it.
    stores = _Stores(settings, receiver, notify_timeout_seconds=1.0)
    dribbler = _Dribbler(every=0.2)
    try:
        uid = f"dribble-{stores.run}"
        stores.hook(uid, url=f"http://127.0.0.1:{dribbler.port}/hook")
        job_id = stores.ended(f"d-{stores.run}", uid)
        dispatcher = Dispatcher(stores.settings, stores.jobs, stores.targets)

        assert dispatcher.tick() == 1
        assert dribbler.hung_up.wait(30), "the dispatcher hung up before the answer was complete"
    finally:
        dribbler.close()
    delivery = stores.delivery(job_id)
    assert delivery is not None and delivery.state == "pending" and delivery.attempts == 1
    assert delivery.last_status == "timeout: no answer within 1 s"
    notes = stores.notes(job_id)
    assert notes.state == "owed", "a failed attempt, backed off like any other"
    assert notes.due_at is not None and notes.due_at > utcnow() + timedelta(minutes=5)
    assert dribbler.requests == 1


def _retry(job_id: str, now: Any) -> Patch:
    """A job whose first attempt failed and whose backoff has run out: a retry, due a minute ago."""
    failed = Delivery(
        kind="webhook",
        attempts=1,
        last_status="HTTP 500",
        last_attempt_at=now - timedelta(minutes=2),
        next_attempt_at=now - timedelta(minutes=1),
    )
    notes = Notifications(
        event_id=f"evt_{job_id}", deliveries={"webhook_e1": failed}, due_at=now - timedelta(minutes=1)
    )
    return Patch().set("status", JobStatus.SUCCEEDED).set("notifications", notes)


def test_hanging_endpoints_take_neither_every_thread_nor_more_than_one_timeout_per_scan(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    # Two threads, three owners whose endpoints hang (longer than the timeout), two retries each,
    # all due before a healthy owner's first attempt.
    stores = _Stores(settings, receiver, notify_parallel=2, notify_timeout_seconds=3.0, notify_batch=20)
    now = utcnow()
    hanging: dict[str, list[str]] = {}
    for n in range(3):
        uid = f"hang{n}-{stores.run}"
        receiver.script[stores.hook(uid)] = ["hang"] * 10
        hanging[uid] = [
            stores.ended(f"h{n}-{stores.run}-{i}", uid, _retry(f"h{n}-{stores.run}-{i}", now))
            for i in range(2)
        ]
    healthy = f"healthy-{stores.run}"
    path = stores.hook(healthy)
    theirs = stores.ended(f"z-{stores.run}", healthy)
    dispatcher = Dispatcher(stores.settings, stores.jobs, stores.targets)

    scan = threading.Thread(target=dispatcher.tick)
    scan.start()
    deadline = time.monotonic() + 60
    while not receiver.for_path(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    # The healthy owner's event arrived while the first hanging attempts were still open.
    seen = {job_id: stores.delivery(job_id) for jobs in hanging.values() for job_id in jobs}
    scan.join(120)
    assert not scan.is_alive()

    assert [r.webhook_id for r in receiver.for_path(path)] == [f"evt_{theirs}"]
    assert stores.notes(theirs).state == "done", "delivered in the first scan"
    assert all(d is not None and d.last_status == "HTTP 500" for d in seen.values()), seen
    # Each hanging owner cost one timeout: its first job was tried, the other one deferred (still
    # due, no attempt counted).
    for uid, (tried, deferred) in hanging.items():
        timed_out, kept = stores.delivery(tried), stores.delivery(deferred)
        assert timed_out is not None and timed_out.attempts == 2, uid
        assert (timed_out.last_status or "").startswith("timeout"), timed_out
        assert kept is not None and kept.attempts == 1 and kept.last_status == "HTTP 500", kept
        due = stores.notes(deferred).due_at
        assert due is not None and due <= utcnow(), "still due"
    assert dispatcher.deferred == 3
    assert sum(len(receiver.for_path(f"/hostile/{stores.run}/{uid}")) for uid in hanging) == 3


def test_a_run_starts_no_attempt_past_its_deadline_and_the_next_run_delivers_the_rest(
    settings: Settings,
) -> None:
    # An endpoint that takes a second to answer (within the timeout): five of its jobs take
    # five seconds, the tick's deadline is at one and a half.
    with webhook_receiver(hang_seconds=1.0) as slow:
        stores = _Stores(
            settings, slow, notify_timeout_seconds=5.0, notify_run_seconds=0.1, notify_deadline_seconds=1.5
        )
        uid = f"late-{stores.run}"
        path = stores.hook(uid)
        slow.script[path] = ["hang"] * 5
        ids = [stores.ended(f"l-{stores.run}-{i}", uid) for i in range(5)]
        dispatcher = Dispatcher(stores.settings, stores.jobs, stores.targets)

        made = dispatcher.run()

        assert 0 < made < len(ids), "no attempt started past the deadline"
        assert dispatcher.deferred == len(ids) - made
        untouched = [job_id for job_id in ids if stores.notes(job_id).deliveries is None]
        assert len(untouched) == len(ids) - made, "the rest left as they were: no attempt counted"
        for job_id in untouched:
            due = stores.notes(job_id).due_at
            assert due is not None and due <= utcnow(), "still due"

        runs = 1
        while made < len(ids) and runs < 10:
            made += dispatcher.run()
            runs += 1

        # Nothing lost, nothing sent or counted twice.
        assert made == len(ids)
        assert sorted(r.webhook_id for r in slow.for_path(path)) == sorted(f"evt_{i}" for i in ids)
        for job_id in ids:
            delivery = stores.delivery(job_id)
            assert stores.notes(job_id).state == "done", job_id
            assert delivery is not None and delivery.attempts == 1, delivery
