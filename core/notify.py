"""The end event of a job and the outbox decisions of its delivery, as pure functions.

The commit that ends a job writes ``notifications: {state: owed}`` (:func:`core.lifecycle.final_patch`).
The dispatcher then, with compare-and-set writes on the job document:

1. **plans** the deliveries: one per channel the owner has registered (each webhook endpoint,
   and their devices as one ``push`` channel), and the event id, which stays the same on every
   retry and redelivery (``evt_{jobId}``: a job ends once);
2. **claims** an attempt of one delivery (``attempts + 1``, ``nextAttemptAt`` = now + the
   attempt's timeout: a lease, so a dispatcher that dies mid-send leaves it to the next one);
   the plan and the first channel's claim go in one write (:func:`decide_plan_and_claim`).
3. **records** the outcome: delivered, or a retry after the backoff, or ``dead`` when the
   attempts are spent. The job's ``notifications.state`` follows: ``done`` once every channel
   delivered, ``dead`` once none is pending and one is dead, ``owed`` while any is pending.

A redelivery asked through the API makes the outbox ``owed`` again with a fresh plan.

Every one of these writes also keeps ``notifications.dueAt``, the time the outbox's next attempt
may start (:func:`due_at`): the end (a server time, stamped by the commit that ends the job) or a
redelivery, then the earliest pending channel's ``nextAttemptAt`` (a backoff or a lease), unset
once the outbox is ``done`` or ``dead``. The dispatcher reads only the jobs due now, in the order
they fell due, so jobs waiting out backoffs never fill a scan. An outbox written before the field
existed is dated once by :func:`decide_due`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from core.contract import Delivery, JobDoc, JobStatus, Notifications
from core.decisions import Decision
from core.patch import Patch

#: the channel key of the owner's devices
PUSH = "push"
#: an output value sent in the event: a file's URI, never the output itself (payloads stay small)
URI_PREFIXES = ("gs://", "https://")
MAX_OUTPUT_URIS = 16


def event_id(job_id: str) -> str:
    """The end event's id: stable across retries, restarts and redeliveries."""
    return f"evt_{job_id}"


def webhook_channel(endpoint_id: str) -> str:
    return f"webhook_{endpoint_id}"


def end_event(job_id: str, job: JobDoc) -> dict[str, Any]:
    """The webhook payload: ids, status, error code and output file URIs only."""
    status = job.effective_status
    data: dict[str, Any] = {"id": job_id, "pipeline": job.pipeline, "status": status.value}
    if job.error is not None and status is not JobStatus.SUCCEEDED:
        data["error"] = {"code": job.error.code}
    uris = output_uris(job.outputs or {})
    if uris:
        data["outputs"] = uris
    when = job.finished_at.isoformat() if job.finished_at else None
    return {"type": f"job.{status.value}", "timestamp": when, "data": data}


def output_uris(outputs: dict[str, Any]) -> dict[str, str]:
    """The file URIs among a job's outputs (top level and ``files``), at most 16."""
    found: dict[str, str] = {}
    candidates = list(outputs.items()) + list((outputs.get("files") or {}).items())
    for key, value in candidates:
        if isinstance(value, str) and value.startswith(URI_PREFIXES) and len(value) <= 1024:
            found[str(key)[:64]] = value
        if len(found) >= MAX_OUTPUT_URIS:
            break
    return found


def due_at(notes: Notifications, now: datetime) -> datetime | None:
    """When the outbox's next attempt may start: None unless it is owed; a channel not yet tried is
    due since the outbox fell due (or ``now`` for an outbox without the field), the others at their
    ``nextAttemptAt``."""
    if notes.state != "owed":
        return None
    if notes.deliveries is None:  # not planned yet: due since it was owed
        return notes.due_at or now
    pending = [d.next_attempt_at for d in notes.deliveries.values() if d.state == "pending"]
    if not pending:
        return None
    since = min(notes.due_at, now) if notes.due_at is not None else now
    return min(since if at is None else at for at in pending)


def _dated(notes: Notifications, now: datetime) -> Notifications:
    return notes.model_copy(update={"due_at": due_at(notes, now)})


def _set_due(patch: Patch, notes: Notifications, now: datetime) -> Patch:
    """``patch`` also writing ``notes.due_at`` as :func:`due_at` says (or removing it)."""
    when = due_at(notes, now)
    return (
        patch.set("notifications.due_at", when) if when is not None else patch.delete("notifications.due_at")
    )


def decide_due(job: JobDoc | None, now: datetime) -> Decision[datetime | None]:
    """Give the outbox the ``dueAt`` its deliveries call for: an outbox written before the field
    existed, or one whose date is off (unset when it is not owed). The result: the time it is due."""
    notes = job.notifications if job is not None else None
    if notes is None:
        return Decision(None)
    when = due_at(notes, now)
    if when == notes.due_at:
        return Decision(when)
    return Decision(when, _set_due(Patch(), notes, now))


def decide_plan(job: JobDoc | None, job_id: str, channels: Iterable[str]) -> Decision[bool]:
    """Fix which channels this event goes to (the owner's registrations now). The result: whether
    there is anything to deliver. A plan already made is kept (another dispatcher made it)."""
    if job is None or job.notifications is None or job.notifications.state != "owed":
        return Decision(False)
    notes = job.notifications
    if notes.deliveries is not None:
        return Decision(any(d.state == "pending" for d in notes.deliveries.values()))
    planned = _planned(notes, job_id, channels)
    return Decision(bool(planned.deliveries), Patch().set("notifications", planned))


def _planned(notes: Notifications, job_id: str, channels: Iterable[str]) -> Notifications:
    """The plan; each channel is due since the outbox was (its ``due_at`` kept, unset if done)."""
    deliveries = {key: Delivery(kind="push" if key == PUSH else "webhook") for key in channels}
    return notes.model_copy(
        update={
            "event_id": notes.event_id or event_id(job_id),
            "deliveries": deliveries,
            "state": "owed" if deliveries else "done",
            "due_at": notes.due_at if deliveries else None,
        }
    )


def decide_plan_and_claim(
    job: JobDoc | None, job_id: str, channels: Sequence[str], *, now: datetime, lease_seconds: float
) -> Decision[int]:
    """:func:`decide_plan` and, in the same write, :func:`decide_attempt` of the first channel:
    one write where there were two. The result: the number of the attempt claimed (1), or 0 when
    none was (nothing registered, the job is done; or a plan made elsewhere, which the caller
    then reads for what is due)."""
    plan = decide_plan(job, job_id, channels)
    if job is None or job.notifications is None or not plan.result or plan.patch is None:
        return Decision(0, plan.patch)
    planned = _planned(job.notifications, job_id, channels)
    assert planned.deliveries is not None
    first = channels[0]
    claimed = _claimed(planned.deliveries[first], now, lease_seconds)
    deliveries = {**planned.deliveries, first: claimed}
    both = _dated(planned.model_copy(update={"deliveries": deliveries}), now)
    return Decision(claimed.attempts, Patch().set("notifications", both))


def due(job: JobDoc, now: datetime) -> list[str]:
    """The channels of an owed job whose next attempt may start now."""
    notes = job.notifications
    if notes is None or notes.state != "owed" or not notes.deliveries:
        return []
    return [
        key
        for key, d in sorted(notes.deliveries.items())
        if d.state == "pending" and (d.next_attempt_at is None or d.next_attempt_at <= now)
    ]


def decide_attempt(job: JobDoc | None, channel: str, *, now: datetime, lease_seconds: float) -> Decision[int]:
    """Claim the next attempt of ``channel``; the result is its number, 0 when it is not due."""
    if job is None or channel not in due(job, now):
        return Decision(0)
    assert job.notifications is not None and job.notifications.deliveries is not None
    claimed = _claimed(job.notifications.deliveries[channel], now, lease_seconds)
    patch = Patch().set(f"notifications.deliveries.{channel}", claimed)
    after = job.notifications.model_copy(
        update={"deliveries": {**job.notifications.deliveries, channel: claimed}}
    )
    return Decision(claimed.attempts, _set_due(patch, after, now))


def _claimed(current: Delivery, now: datetime, lease_seconds: float) -> Delivery:
    """The next attempt of a delivery, leased until ``now + lease_seconds``."""
    return current.model_copy(
        update={
            "attempts": current.attempts + 1,
            "last_attempt_at": now,
            "next_attempt_at": now + timedelta(seconds=lease_seconds),
        }
    )


def decide_outcome(
    job: JobDoc | None,
    channel: str,
    *,
    attempt: int,
    delivered: bool,
    status: str,
    now: datetime,
    backoff: Sequence[float],
    permanent: bool = False,
) -> Decision[Literal["delivered", "retry", "dead", "stale"]]:
    """Record how attempt ``attempt`` of ``channel`` went. ``stale``: the attempt is not the
    current one any more (its lease ran out and another dispatcher took over), nothing written.

    ``backoff[i]`` is the wait after the (i+1)-th failed attempt; after ``len(backoff) + 1``
    attempts, or a ``permanent`` failure, the delivery is dead."""
    notes = job.notifications if job is not None else None
    current = (notes.deliveries or {}).get(channel) if notes is not None else None
    if notes is None or current is None or current.state != "pending" or current.attempts != attempt:
        return Decision("stale")
    outcome: Literal["delivered", "retry", "dead"]
    if delivered:
        outcome = "delivered"
        update: dict[str, Any] = {"state": "delivered", "delivered_at": now, "next_attempt_at": None}
    elif permanent or attempt > len(backoff):
        outcome = "dead"
        update = {"state": "dead", "next_attempt_at": None}
    else:
        outcome = "retry"
        update = {"next_attempt_at": now + timedelta(seconds=backoff[attempt - 1])}
    ended = current.model_copy(update={**update, "last_status": status})
    deliveries = {**(notes.deliveries or {}), channel: ended}
    patch = Patch().set(f"notifications.deliveries.{channel}", ended)
    state = overall(deliveries)
    if state != notes.state:
        patch.set("notifications.state", state)
    return Decision(
        outcome, _set_due(patch, notes.model_copy(update={"deliveries": deliveries, "state": state}), now)
    )


def overall(deliveries: dict[str, Delivery]) -> Literal["owed", "done", "dead"]:
    states = {d.state for d in deliveries.values()}
    if "pending" in states:
        return "owed"
    return "dead" if "dead" in states else "done"


def decide_redeliver(job: JobDoc | None) -> Decision[bool]:
    """Owe the end event again (every channel the owner has then); the event id stays, and it is
    due at once (``dueAt``: the write's server time). The result: whether the job has ended (only
    a final job has an end event to send)."""
    if job is None or not job.effective_status.is_final:
        return Decision(False)
    notes = job.notifications or Notifications()
    again = Notifications(state="owed", event_id=notes.event_id, redeliveries=notes.redeliveries + 1)
    return Decision(True, Patch().set("notifications", again, stamp="due_at"))


__all__ = [
    "PUSH",
    "decide_attempt",
    "decide_due",
    "decide_outcome",
    "decide_plan",
    "decide_plan_and_claim",
    "decide_redeliver",
    "due",
    "due_at",
    "end_event",
    "event_id",
    "output_uris",
    "overall",
    "webhook_channel",
]
