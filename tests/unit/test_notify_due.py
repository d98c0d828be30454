"""``notifications.dueAt``: when an outbox's next attempt may start, kept by every outbox write.

The dispatcher's scan reads only the jobs whose ``dueAt`` has passed, the longest due first, so
the date must follow the outbox through its life and go once nothing more is owed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core import notify
from core.contract import Delivery, JobDoc, JobStatus, Notifications
from core.lifecycle import final_patch
from core.patch import SERVER_TIME, Patch
from infra.jobs import applied

ENDED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW = ENDED + timedelta(seconds=2)
LEASE = 35.0
BACKOFF = [5.0, 30.0]


def ended(notes: Notifications) -> JobDoc:
    return JobDoc(uid="u1", pipeline="flaky", status=JobStatus.SUCCEEDED, notifications=notes)


def after(job: JobDoc, patch: Patch | None) -> JobDoc:
    """The job once ``patch`` (paths under ``notifications`` only) is written."""
    assert patch is not None
    return applied(job, patch, NOW)


def due_at(job: JobDoc) -> datetime | None:
    assert job.notifications is not None
    return job.notifications.due_at


def test_the_end_and_a_redelivery_are_due_from_their_own_commit() -> None:
    assert final_patch(Patch(), JobStatus.SUCCEEDED).to_dict()["notifications"]["dueAt"] is SERVER_TIME
    dead = ended(Notifications(state="dead", event_id="evt_j1", deliveries={}))
    assert notify.decide_redeliver(dead).patch.to_dict()["notifications"]["dueAt"] is SERVER_TIME  # type: ignore[union-attr]


def test_the_date_follows_claims_and_backoffs_and_goes_once_delivered() -> None:
    job = ended(Notifications(due_at=ENDED))
    first = notify.decide_plan_and_claim(job, "j1", ["webhook_a"], now=NOW, lease_seconds=LEASE)
    job = after(job, first.patch)
    assert due_at(job) == NOW + timedelta(seconds=LEASE), "leased: due when the lease runs out"

    failed = notify.decide_outcome(
        job, "webhook_a", attempt=1, delivered=False, status="HTTP 500", now=NOW, backoff=BACKOFF
    )
    job = after(job, failed.patch)
    assert due_at(job) == NOW + timedelta(seconds=5), "due when its backoff ends"

    later = NOW + timedelta(seconds=5)
    second = notify.decide_attempt(job, "webhook_a", now=later, lease_seconds=LEASE)
    job = after(job, second.patch)
    assert due_at(job) == later + timedelta(seconds=LEASE)

    ok = notify.decide_outcome(
        job, "webhook_a", attempt=2, delivered=True, status="HTTP 204", now=later, backoff=BACKOFF
    )
    job = after(job, ok.patch)
    assert job.notifications is not None and job.notifications.state == "done"
    assert due_at(job) is None, "done: never read by a scan again"


def test_a_dead_outbox_has_no_date() -> None:
    busy = Delivery(kind="webhook", attempts=3, next_attempt_at=NOW + timedelta(seconds=LEASE))
    job = ended(Notifications(event_id="evt_j1", deliveries={"webhook_a": busy}, due_at=NOW))
    made = notify.decide_outcome(
        job, "webhook_a", attempt=3, delivered=False, status="HTTP 500", now=NOW, backoff=BACKOFF
    )
    assert made.result == "dead" and due_at(after(job, made.patch)) is None


def test_the_earliest_pending_channel_sets_the_date() -> None:
    job = ended(Notifications(due_at=ENDED))
    both = notify.decide_plan_and_claim(job, "j1", ["webhook_a", notify.PUSH], now=NOW, lease_seconds=LEASE)
    job = after(job, both.patch)
    assert due_at(job) == ENDED, "push is not tried yet: due since the end"

    push = notify.decide_attempt(job, notify.PUSH, now=NOW, lease_seconds=10)
    job = after(job, push.patch)
    assert due_at(job) == NOW + timedelta(seconds=10), "the earlier of the two leases"

    delivered = notify.decide_outcome(
        job, notify.PUSH, attempt=1, delivered=True, status="sent", now=NOW, backoff=BACKOFF
    )
    job = after(job, delivered.patch)
    assert due_at(job) == NOW + timedelta(seconds=LEASE), "the webhook's lease is what is left"


def test_an_outbox_of_an_older_release_gets_its_date() -> None:
    fresh = ended(Notifications())  # ended by a release without dueAt: due now
    assert due_at(after(fresh, notify.decide_due(fresh, NOW).patch)) == NOW

    waiting = Delivery(kind="webhook", attempts=1, next_attempt_at=NOW + timedelta(seconds=30))
    retrying = ended(Notifications(event_id="evt_j1", deliveries={"webhook_a": waiting}))
    assert due_at(after(retrying, notify.decide_due(retrying, NOW).patch)) == NOW + timedelta(seconds=30)

    right = ended(
        Notifications(event_id="evt_j1", deliveries={"webhook_a": waiting}, due_at=waiting.next_attempt_at)
    )
    assert notify.decide_due(right, NOW).patch is None, "a right date is not written again"

    stray = ended(Notifications(state="done", event_id="evt_j1", deliveries={}, due_at=NOW))
    assert due_at(after(stray, notify.decide_due(stray, NOW).patch)) is None
