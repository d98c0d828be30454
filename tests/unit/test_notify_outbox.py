"""The plan of an end event and its first attempt's claim, decided as one write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core import notify
from core.contract import Delivery, JobDoc, JobStatus, Notifications

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LEASE = 35.0


def ended(notes: Notifications) -> JobDoc:
    return JobDoc(uid="u1", pipeline="flaky", status=JobStatus.SUCCEEDED, notifications=notes)


def test_one_write_leaves_the_job_as_the_plan_then_the_claim_did() -> None:
    job = ended(Notifications(due_at=NOW - timedelta(seconds=1)))
    channels = ["webhook_a", notify.PUSH]

    both = notify.decide_plan_and_claim(job, "j1", channels, now=NOW, lease_seconds=LEASE)

    plan = notify.decide_plan(job, "j1", channels)
    assert plan.patch is not None
    planned = ended(Notifications.model_validate(plan.patch.to_dict()["notifications"]))
    claim = notify.decide_attempt(planned, "webhook_a", now=NOW, lease_seconds=LEASE)
    assert claim.patch is not None
    expected = plan.patch.to_dict()["notifications"]
    expected["deliveries"]["webhook_a"] = claim.patch.to_dict()["notifications.deliveries.webhook_a"]
    expected["dueAt"] = claim.patch.to_dict()["notifications.dueAt"]
    assert both.result == claim.result == 1
    assert both.patch is not None and both.patch.to_dict() == {"notifications": expected}
    written = Notifications.model_validate(expected)
    assert written.deliveries is not None
    assert written.deliveries["webhook_a"].next_attempt_at == NOW + timedelta(seconds=LEASE)
    assert notify.due(ended(written), NOW) == [notify.PUSH], "the claimed channel is leased, not due"
    assert written.due_at == NOW - timedelta(seconds=1), "push is still due since the end"


def test_nothing_registered_is_done_with_no_attempt() -> None:
    made = notify.decide_plan_and_claim(ended(Notifications()), "j1", [], now=NOW, lease_seconds=LEASE)
    assert made.result == 0
    assert made.patch is not None and made.patch.to_dict()["notifications"]["state"] == "done"


def test_a_plan_made_elsewhere_is_kept_and_nothing_claimed() -> None:
    elsewhere = Notifications(state="owed", event_id="evt_j1", deliveries={"push": Delivery(kind="push")})
    made = notify.decide_plan_and_claim(ended(elsewhere), "j1", ["webhook_a"], now=NOW, lease_seconds=LEASE)
    assert made.result == 0 and not made.patch
    done = Notifications(state="done", event_id="evt_j1", deliveries={})
    gone = notify.decide_plan_and_claim(ended(done), "j1", ["webhook_a"], now=NOW, lease_seconds=LEASE)
    assert gone.result == 0 and not gone.patch
