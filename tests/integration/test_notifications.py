"""Completion notifications on the stack: signed webhooks and FCM push, through the outbox.

A receiver verifying signatures with ``standardwebhooks`` gets exactly one logical event per
final job (one webhook-id) across failed, timed-out and redirected attempts and a dispatcher that
dies mid-delivery; a dead endpoint ends in the dead letter, which the job shows; redelivery
through the API sends the same event again; the FCM stand-in gets the message and a stale token
is dropped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import pytest

from core.contract import JobDoc, JobStatus
from core.lifecycle import final_patch
from core.patch import Patch
from devkit.firebase_auth import AuthUser, sign_up
from devkit.receivers import FcmReceiver, WebhookReceiver, fcm_receiver, webhook_receiver
from functions.notify import Dispatcher, Sent, WebhookSender
from infra.jobs import JobStore, firestore_client, to_firestore, utcnow
from infra.localstack.stack import LocalStack
from infra.notify_targets import Endpoint, Secret, TargetStore, device_key, new_secret
from infra.settings import Settings
from tests.integration.conftest import FCM_PORT

pytestmark = pytest.mark.pipelines("flaky")

T = TypeVar("T")
WAIT = 120.0


def until(check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll ``check`` until it returns something (not a timing assertion: a bound on waiting)."""
    end = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.env["API_URL"], timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def receiver(stack: LocalStack) -> Iterator[WebhookReceiver]:
    # Longer than NOTIFY_TIMEOUT_SECONDS (2 on the test stack): a "hang" is a timed-out attempt.
    with webhook_receiver(hang_seconds=4) as running:
        yield running


@pytest.fixture(scope="module")
def fcm(stack: LocalStack) -> Iterator[FcmReceiver]:
    with fcm_receiver(FCM_PORT) as running:
        yield running


@pytest.fixture
def user(stack: LocalStack) -> AuthUser:
    return sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])


def register(api: httpx.Client, user: AuthUser, receiver: WebhookReceiver, script: list[str]) -> str:
    """An endpoint of ``user`` on its own receiver path, answering ``script`` first, then ok."""
    path = f"/hook/{uuid.uuid4().hex[:8]}"
    resp = api.post("/v1/webhooks", headers=user.headers, json={"url": receiver.url(path)})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["secret"].startswith("whsec_")
    receiver.secrets[path] = body["secret"]
    receiver.script[path] = list(script)
    return path


def create(api: httpx.Client, user: AuthUser, **inputs: Any) -> str:
    resp = api.post("/v1/jobs", headers=user.headers, json={"pipeline": "flaky", "inputs": inputs})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def settled(api: httpx.Client, user: AuthUser, job_id: str) -> dict[str, Any] | None:
    """The job once its notifications are no longer owed."""
    job: dict[str, Any] = api.get(f"/v1/jobs/{job_id}", headers=user.headers).json()
    notes = job.get("notifications") or {}
    return job if notes.get("state") in ("done", "dead") else None


def test_one_logical_event_across_failures_timeouts_and_a_redirect(
    api: httpx.Client, user: AuthUser, receiver: WebhookReceiver
) -> None:
    path = register(api, user, receiver, ["fail", "hang", "redirect"])
    job_id = create(api, user, steps=2, step_seconds=0.01)

    job = until(lambda: settled(api, user, job_id), "the webhook to be delivered")

    assert job["status"] == "succeeded"
    got = receiver.for_path(path)
    assert [r.answered for r in got] == ["fail", "hang", "redirect", "ok"]
    assert all(r.verified for r in got), "every attempt is signed with the endpoint's secret"
    assert {r.webhook_id for r in got} == {f"evt_{job_id}"}, "retries keep the event id"
    assert got[-1].body["type"] == "job.succeeded"
    assert got[-1].body["data"]["id"] == job_id
    assert all(v.startswith("gs://") for v in got[-1].body["data"]["outputs"].values())
    # The redirect was a failed attempt, never followed.
    assert receiver.for_path("/redirected") == []
    notes = job["notifications"]
    (delivery,) = notes["deliveries"].values()
    assert notes["state"] == "done"
    assert delivery["state"] == "delivered" and delivery["attempts"] == 4
    assert delivery["lastStatus"] == "HTTP 204" and delivery["deliveredAt"]


def test_a_rejected_job_is_announced_too(
    api: httpx.Client, user: AuthUser, receiver: WebhookReceiver
) -> None:
    path = register(api, user, receiver, [])
    resp = api.post("/v1/jobs", headers=user.headers, json={"pipeline": "flaky", "inputs": {"steps": 0}})
    assert resp.status_code == 422, resp.text

    got = until(lambda: receiver.for_path(path), "the rejection's webhook")

    assert got[0].verified and got[0].body["type"] == "job.rejected"
    assert got[0].body["data"]["error"]["code"]


def test_a_dead_endpoint_ends_in_the_dead_letter_and_redelivery_sends_the_same_event(
    api: httpx.Client, user: AuthUser, receiver: WebhookReceiver
) -> None:
    path = register(api, user, receiver, ["fail"] * 5)
    job_id = create(api, user, steps=1, step_seconds=0.0)

    job = until(lambda: settled(api, user, job_id), "the delivery to give up")

    notes = job["notifications"]
    (delivery,) = notes["deliveries"].values()
    assert notes["state"] == "dead"
    assert delivery["state"] == "dead" and delivery["attempts"] == 5
    assert delivery["lastStatus"] == "HTTP 500"
    assert len(receiver.for_path(path)) == 5

    # The endpoint works again (its script is spent): ask for the event once more.
    resp = api.post(f"/v1/jobs/{job_id}/redeliver", headers=user.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["notifications"]["state"] in ("owed", "done")

    job = until(lambda: settled(api, user, job_id), "the redelivery")

    assert job["notifications"]["state"] == "done"
    assert job["notifications"]["redeliveries"] == 1
    got = receiver.for_path(path)
    assert got[-1].answered == "ok" and got[-1].verified
    assert {r.webhook_id for r in got} == {f"evt_{job_id}"}


def test_redelivery_of_an_unfinished_job_is_refused(api: httpx.Client, user: AuthUser) -> None:
    job_id = create(api, user, steps=400, step_seconds=0.05)
    resp = api.post(f"/v1/jobs/{job_id}/redeliver", headers=user.headers)
    assert resp.status_code == 409 and resp.json()["code"] == "not_finished"
    api.post(f"/v1/jobs/{job_id}/cancel", headers=user.headers)


def test_webhook_urls_must_be_https_to_public_hosts(
    stack: LocalStack, api: httpx.Client, user: AuthUser
) -> None:
    for url in ["http://example.com/hook", "ftp://example.com/", "https://user:pw@example.com/"]:
        resp = api.post("/v1/webhooks", headers=user.headers, json={"url": url})
        assert resp.status_code == 422 and resp.json()["code"] == "invalid_webhook_url", url


def test_push_reaches_the_device_and_a_stale_token_is_dropped(
    stack: LocalStack, api: httpx.Client, user: AuthUser, fcm: FcmReceiver, settings: Settings
) -> None:
    good, stale = f"good-{uuid.uuid4().hex}", f"stale-{uuid.uuid4().hex}"
    fcm.stale.add(stale)
    for token in (good, stale):
        resp = api.post("/v1/devices", headers=user.headers, json={"token": token})
        assert resp.status_code == 201, resp.text
    job_id = create(api, user, steps=1, step_seconds=0.0)

    job = until(lambda: settled(api, user, job_id), "the push delivery")

    assert job["notifications"]["deliveries"]["push"]["state"] == "delivered"
    (message,) = fcm.to(good)
    assert message["message"]["data"] == {
        "jobId": job_id,
        "status": "succeeded",
        "pipeline": "flaky",
        "eventId": f"evt_{job_id}",
    }
    targets = TargetStore(firestore_client(settings), settings.notify_targets_collection).get(user.uid)
    assert set(targets.devices) == {device_key(good)}, "FCM called the other token unregistered"


class _DiesAfterSending(WebhookSender):
    """A dispatcher that is killed after its POST reached the receiver, before it recorded it."""

    def send(self, *args: Any, **kwargs: Any) -> Sent:
        super().send(*args, **kwargs)
        raise SystemExit("killed mid-delivery")


def test_a_restarted_dispatcher_sends_the_same_event_again(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    # Its own collections, which the stack's dispatcher does not scan: this test plays both
    # dispatchers, the one that dies and the one started after it.
    run = uuid.uuid4().hex[:8]
    local = settings.model_copy(
        update={"jobs_collection": f"notify-jobs-{run}", "notify_targets_collection": f"notify-targets-{run}"}
    )
    db = firestore_client(local)
    jobs = JobStore(db, local.jobs_collection)
    targets = TargetStore(db, local.notify_targets_collection)
    path, secret, uid, job_id = f"/restart/{run}", new_secret(), f"user-{run}", f"job-{run}"
    receiver.secrets[path] = secret
    targets.update(
        uid,
        lambda t: t.webhooks.update(
            {"e1": Endpoint(url=receiver.url(path), secrets=[Secret(secret=secret)], created_at=utcnow())}
        ),
    )
    # A job as the commit that ended it leaves it: final, with its end event owed.
    assert jobs.create(job_id, JobDoc(uid=uid, pipeline="flaky", status=JobStatus.RUNNING))
    end = final_patch(Patch(), JobStatus.SUCCEEDED)
    jobs.ref(job_id).update(to_firestore(end))

    first = Dispatcher(local, jobs, targets, webhooks=_DiesAfterSending(local))
    with pytest.raises(SystemExit):
        first.tick()
    in_flight = jobs.get(job_id)
    assert in_flight is not None and in_flight.notifications is not None
    assert in_flight.notifications.state == "owed"

    # Started later, once the dead one's claim has lapsed.
    later = Dispatcher(local, jobs, targets, clock=lambda: utcnow() + timedelta(minutes=5))
    assert later.tick() == 1

    done = jobs.get(job_id)
    assert done is not None and done.notifications is not None
    assert done.notifications.state == "done"
    assert done.notifications.deliveries is not None
    assert done.notifications.deliveries["webhook_e1"].attempts == 2
    got = receiver.for_path(path)
    assert len(got) == 2 and all(r.verified for r in got)
    assert {r.webhook_id for r in got} == {f"evt_{job_id}"}, "one logical event"
