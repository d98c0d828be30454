"""The notification outbox's decisions, and the webhook and FCM senders against local receivers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from core import notify
from core.contract import Delivery, ErrorInfo, JobDoc, JobStatus, Lease, Notifications
from core.decisions import Ending
from core.lifecycle import decide_finish
from core.patch import SERVER_TIME
from core.recovery import decide_recover, decide_transition
from core.work import WorkRef
from devkit.receivers import WebhookReceiver, fcm_receiver, webhook_receiver
from functions.notify import PushSender, WebhookSender, check_webhook_url
from infra.jobs import applied
from infra.notify_targets import Device, Endpoint, Secret, Targets, new_secret, rotated
from infra.settings import Settings

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BACKOFF = [5.0, 30.0]


def owed(**deliveries: Delivery) -> JobDoc:
    notes = Notifications(state="owed", event_id="evt_j1", deliveries=deliveries or None)
    return JobDoc(uid="u1", pipeline="flaky", status=JobStatus.SUCCEEDED, notifications=notes)


def running() -> JobDoc:
    lease = Lease(owner="w1", expires_at=NOW - timedelta(seconds=1))
    return JobDoc(uid="u1", pipeline="flaky", status=JobStatus.RUNNING, attempt=3, lease=lease)


@pytest.mark.parametrize(
    "decision",
    [
        pytest.param(
            lambda: decide_finish(
                running().model_copy(update={"lease": Lease(owner="w1", expires_at=NOW + timedelta(60))}),
                WorkRef("j1"),
                owner="w1",
                attempt=3,
                ending=Ending(JobStatus.SUCCEEDED, outputs={}),
            ),
            id="worker",
        ),
        pytest.param(
            lambda: decide_transition(
                JobDoc(uid="u1", pipeline="flaky"), JobStatus.REJECTED, allowed_from=[JobStatus.PENDING]
            ),
            id="rejection",
        ),
        pytest.param(
            lambda: decide_transition(
                JobDoc(uid="u1", pipeline="flaky", status=JobStatus.QUEUED), JobStatus.CANCELLED
            ),
            id="cancel",
        ),
        pytest.param(
            lambda: decide_transition(
                JobDoc(uid="u1", pipeline="flaky", status=JobStatus.QUEUED),
                JobStatus.FAILED,
                patch=None,
            ),
            id="dead-letter",
        ),
        pytest.param(lambda: decide_recover(running(), WorkRef("j1"), now=NOW, max_attempts=3), id="sweeper"),
    ],
)
def test_every_commit_that_ends_a_job_owes_its_end_event(decision: object) -> None:
    made = decision()  # type: ignore[operator]
    data = made.patch.to_dict()
    assert data["status"] in {"succeeded", "failed", "rejected", "cancelled"}
    # Due from the end: the commit's own time.
    assert data["notifications"] == {"state": "owed", "redeliveries": 0, "dueAt": SERVER_TIME}


def test_the_plan_names_each_channel_and_a_stable_event_id() -> None:
    job = owed().model_copy(update={"notifications": Notifications()})
    made = notify.decide_plan(job, "j1", ["webhook_a", notify.PUSH])
    assert made.result is True
    planned = made.patch.to_dict()["notifications"]
    assert planned["eventId"] == "evt_j1"
    assert planned["deliveries"] == {
        "webhook_a": {"kind": "webhook", "state": "pending", "attempts": 0},
        "push": {"kind": "push", "state": "pending", "attempts": 0},
    }


def test_nothing_registered_means_nothing_owed() -> None:
    job = owed().model_copy(update={"notifications": Notifications()})
    made = notify.decide_plan(job, "j1", [])
    assert made.result is False
    assert made.patch.to_dict()["notifications"]["state"] == "done"


def test_a_failed_attempt_waits_its_backoff_then_the_dead_letter() -> None:
    job, now = owed(webhook_a=Delivery(kind="webhook")), NOW
    for attempt, wait in enumerate([*BACKOFF, None], start=1):
        claim = notify.decide_attempt(job, "webhook_a", now=now, lease_seconds=30)
        assert claim.result == attempt
        job = applied(job, claim.patch, now)
        assert notify.due(job, now) == [], "claimed: not due for another dispatcher"
        made = notify.decide_outcome(
            job, "webhook_a", attempt=attempt, delivered=False, status="HTTP 500", now=now, backoff=BACKOFF
        )
        job = applied(job, made.patch, now)
        assert job.notifications is not None and job.notifications.deliveries is not None
        delivery = job.notifications.deliveries["webhook_a"]
        if wait is None:
            assert made.result == "dead" and delivery.state == "dead"
            assert job.notifications.state == "dead"
        else:
            assert made.result == "retry" and job.notifications.state == "owed"
            assert delivery.next_attempt_at == now + timedelta(seconds=wait)
            assert notify.due(job, now + timedelta(seconds=wait - 1)) == []
            now += timedelta(seconds=wait)


def test_an_outcome_of_an_attempt_that_was_taken_over_is_not_recorded() -> None:
    job = owed(webhook_a=Delivery(kind="webhook", attempts=2))
    made = notify.decide_outcome(
        job, "webhook_a", attempt=1, delivered=True, status="HTTP 200", now=NOW, backoff=BACKOFF
    )
    assert made.result == "stale" and not made.patch


def test_done_once_every_channel_delivered() -> None:
    job = owed(webhook_a=Delivery(kind="webhook", attempts=1), push=Delivery(kind="push", state="delivered"))
    made = notify.decide_outcome(
        job, "webhook_a", attempt=1, delivered=True, status="HTTP 204", now=NOW, backoff=BACKOFF
    )
    assert made.patch.to_dict()["notifications.state"] == "done"


def test_redelivery_keeps_the_event_id_and_needs_a_final_job() -> None:
    job = owed(webhook_a=Delivery(kind="webhook", state="dead", attempts=3))
    again = notify.decide_redeliver(job).patch.to_dict()["notifications"]
    assert again == {"state": "owed", "eventId": "evt_j1", "redeliveries": 1, "dueAt": SERVER_TIME}
    assert notify.decide_redeliver(running()).result is False


def test_the_event_is_small_ids_status_and_uris() -> None:
    job = JobDoc(
        uid="u1",
        pipeline="flaky",
        status=JobStatus.FAILED,
        error=ErrorInfo(code="told_to_fail", message="secret details"),
        outputs={"text": "a long transcript", "files": {"result.txt": "gs://b/results/u1/j1/1/result.txt"}},
    )
    event = notify.end_event("j1", job)
    assert event["type"] == "job.failed"
    assert event["data"] == {
        "id": "j1",
        "pipeline": "flaky",
        "status": "failed",
        "error": {"code": "told_to_fail"},
        "outputs": {"result.txt": "gs://b/results/u1/j1/1/result.txt"},
    }


# -- senders -----------------------------------------------------------------------------------


@pytest.fixture
def local(no_settings_env: None) -> Settings:
    return Settings(environment="local", notify_allow_loopback=True, notify_timeout_seconds=1)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver(hang_seconds=2) as running:
        yield running


def endpoint(url: str, *secrets: str) -> Endpoint:
    return Endpoint(url=url, secrets=[Secret(secret=s) for s in secrets], created_at=NOW)


def test_each_attempt_is_signed_and_a_redirect_is_not_followed(
    local: Settings, receiver: WebhookReceiver
) -> None:
    secret = new_secret()
    receiver.secrets["/a"] = secret
    receiver.script["/a"] = ["fail", "hang", "redirect"]
    sender = WebhookSender(local)
    outcomes = [
        sender.send(endpoint(receiver.url("/a"), secret), "evt_1", b'{"a":1}', datetime.now(UTC))
        for _ in range(4)
    ]
    assert [o.status for o in outcomes] == [
        "HTTP 500",
        "timeout: no answer within 1 s",
        "HTTP 307: a redirect (not followed)",
        "HTTP 204",
    ]
    assert [o.delivered for o in outcomes] == [False, False, False, True]
    assert [(r.webhook_id, r.verified) for r in receiver.received] == [("evt_1", True)] * 4
    assert receiver.for_path("/redirected") == []


def test_a_rotated_secret_signs_with_both_during_the_grace(
    local: Settings, receiver: WebhookReceiver
) -> None:
    old = endpoint(receiver.url("/r"), new_secret())
    fresh, secret = rotated(old, datetime.now(UTC), grace_seconds=60)
    receiver.secrets["/r"] = old.secrets[0].secret  # a receiver that has not switched yet
    WebhookSender(local).send(fresh, "evt_2", b"{}", datetime.now(UTC))
    receiver.secrets["/r"] = secret
    WebhookSender(local).send(fresh, "evt_2", b"{}", datetime.now(UTC))
    assert [r.verified for r in receiver.for_path("/r")] == [True, True]
    expired, _ = rotated(old, datetime.now(UTC), grace_seconds=0)
    assert expired.signing_secrets(datetime.now(UTC)) == [expired.secrets[0].secret]


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("https://127.0.0.1/hook", False),
        ("https://10.0.0.7/hook", True),
        ("https://169.254.169.254/latest", True),
        ("https://metadata.google.internal/", True),
        ("http://example.com/hook", True),
    ],
)
def test_hostile_urls_are_refused_when_connecting(no_settings_env: None, url: str, loopback: bool) -> None:
    settings = Settings(environment="local", notify_allow_loopback=loopback)
    outcome = WebhookSender(settings).send(endpoint(url, new_secret()), "evt_3", b"{}", NOW)
    assert not outcome.delivered and outcome.permanent
    assert outcome.status.startswith("refused: ")


def test_registration_accepts_https_and_local_http_only_when_allowed() -> None:
    assert check_webhook_url("https://example.com/h", allow_loopback=False) == "https://example.com/h"
    assert check_webhook_url("http://127.0.0.1:9/h", allow_loopback=True) == "http://127.0.0.1:9/h"
    for url, loopback in [("http://127.0.0.1:9/h", False), ("http://example.com/h", True)]:
        with pytest.raises(Exception, match="https"):
            check_webhook_url(url, allow_loopback=loopback)


def test_production_refuses_the_local_only_settings(no_settings_env: None) -> None:
    with pytest.raises(ValueError, match="local stack only"):
        Settings(notify_allow_loopback=True)
    with pytest.raises(ValueError, match="local stack only"):
        Settings(fcm_url="http://127.0.0.1:1/v1/projects/{project}/messages:send")


def test_push_sends_one_message_per_device_and_reports_stale_tokens(no_settings_env: None) -> None:
    with fcm_receiver() as fcm:
        fcm.stale.add("old-token")
        sender = PushSender(Settings(environment="local", fcm_url=fcm.url))
        devices = {
            "k1": Device(token="new-token", created_at=NOW),
            "k2": Device(token="old-token", created_at=NOW),
        }
        data = {"jobId": "j1", "status": "succeeded", "pipeline": "flaky", "eventId": "evt_j1"}
        outcome, stale = sender.send(Targets(devices=devices), data)
    assert outcome.delivered and stale == ["k2"]
    assert [m["message"]["data"] for m in fcm.to("new-token")] == [data]


def test_the_receiver_verifies_with_standardwebhooks() -> None:
    secret = new_secret()
    signature = Webhook(secret).sign("evt_x", NOW, b"{}")
    assert signature.startswith("v1,")


def test_the_api_documents_the_notification_routes(no_settings_env: None) -> None:
    from types import SimpleNamespace

    from api.app import create_app

    api = SimpleNamespace(settings=Settings(), deps=SimpleNamespace(catalog=None))
    app = create_app(api)  # type: ignore[arg-type]
    paths = app.openapi()["paths"]
    assert {
        "/v1/webhooks",
        "/v1/webhooks/{endpoint_id}",
        "/v1/webhooks/{endpoint_id}/rotate",
        "/v1/devices",
        "/v1/devices/{device_id}",
        "/v1/jobs/{job_id}/redeliver",
    } <= set(paths)
