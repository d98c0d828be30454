"""Who goes first (core/lanes.py): interactive before batch, batch aged so it is never starved,
and weighted fair share between users; the capacity queue and the redriver follow the same rule."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from core.contract import JobMessage
from core.lanes import FairShare, Priority, allowed_priority
from core.quota import QuotaPolicy, QuotaTier
from gpu_service.capacity import Capacity
from gpu_service.redrive import Candidate, fair_order

INT, BAT = Priority.INTERACTIVE, Priority.BATCH


@dataclass(frozen=True)
class Unit:
    name: str
    uid: str
    priority: Priority = INT
    weight: float = 1.0
    since: float = 0.0
    order: int = 0


def _units(uid: str, n: int, priority: Priority = INT, weight: float = 1.0, since: float = 0.0) -> list[Unit]:
    return [Unit(f"{uid}{i}", uid, priority, weight, since + i, i) for i in range(n)]


def _serve(share: FairShare, waiting: list[Unit], slots: int, starts: int, now: float = 0.0) -> list[str]:
    """Start ``starts`` units on ``slots`` slots, each start ending the oldest running unit once
    every slot is busy: the users of the units started, in order."""
    running: dict[str, int] = {}
    in_flight: list[str] = []
    started: list[str] = []
    pool = list(waiting)
    for _ in range(starts):
        if len(in_flight) == slots:
            done = in_flight.pop(0)
            running[done] -= 1
        unit = share.pick(pool, running, now)
        assert unit is not None
        pool.remove(unit)
        share.started(unit.uid, unit.weight)
        running[unit.uid] = running.get(unit.uid, 0) + 1
        in_flight.append(unit.uid)
        started.append(unit.uid)
    return started


def test_interactive_work_goes_before_batch_work_that_came_first() -> None:
    share = FairShare(aging_seconds=60)
    waiting = [*_units("bulk", 50, BAT, since=0), *_units("app", 3, INT, since=10)]
    order = share.order(waiting, {}, now=20)
    assert [u.uid for u in order[:3]] == ["app"] * 3
    assert {u.uid for u in order[3:]} == {"bulk"}  # and the backlog still drains after them


def test_batch_work_that_waited_past_the_aging_time_is_not_starved_by_a_stream_of_interactive_work() -> None:
    share = FairShare(aging_seconds=30)
    old_batch = Unit("old", "bulk", BAT, since=0)
    stream = _units("app", 20, INT, since=40)
    # Before it aged, every interactive unit goes first...
    assert share.pick([old_batch, *stream], {"app": 1}, now=20) is not old_batch
    # ...once aged it competes in the interactive lane by fair share, and the user running less wins.
    assert share.pick([old_batch, *stream], {"app": 1}, now=31) is old_batch
    # Between equals an interactive unit still goes before an aged batch one.
    assert share.pick([old_batch, stream[0]], {}, now=31) is stream[0]


def test_two_users_with_100_and_2_jobs_share_slots_by_their_weights() -> None:
    share = FairShare()
    heavy = _units("heavy", 100, weight=1.0)
    light = _units("light", 2, weight=1.0, since=50)
    started = _serve(share, [*heavy, *light], slots=2, starts=6)
    # The light user's two jobs do not wait behind the heavy user's hundred.
    assert started[:4].count("light") == 2


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_a_user_of_weight_two_gets_two_slots_for_each_of_a_weight_one_user(slots: int) -> None:
    share = FairShare()
    waiting = [*_units("gold", 60, weight=2.0), *_units("free", 60, weight=1.0)]
    started = _serve(share, waiting, slots=slots, starts=30)
    assert started.count("gold") == 20 and started.count("free") == 10


def test_a_user_who_was_idle_does_not_save_up_credit() -> None:
    share = FairShare()
    _serve(share, _units("a", 40), slots=1, starts=40)
    # b arrives after a ran 40 units alone: b goes next, then they alternate (b does not run 40 in a row).
    started = _serve(share, [*_units("a", 10, since=100), *_units("b", 10, since=100)], slots=1, starts=6)
    assert started[0] == "b"
    assert started.count("a") == 3 and started.count("b") == 3


def test_order_is_the_sequence_of_picks_and_leaves_the_state_alone() -> None:
    share = FairShare(aging_seconds=5)
    waiting = [
        *_units("x", 4, BAT, weight=2.0),
        *_units("y", 3, INT, since=3),
        Unit("z0", "z", BAT, since=-10),
    ]
    order = share.order(waiting, {"y": 1}, now=4)
    again = share.order(waiting, {"y": 1}, now=4)
    assert order == again and sorted(u.name for u in order) == sorted(u.name for u in waiting)
    # the aged batch unit of z (running nothing) first; then y's interactive units; x's batch last
    assert [u.name for u in order[:4]] == ["z0", "y0", "y1", "y2"]
    assert share.virtual_time("x") == 0.0


def test_the_lane_a_job_waits_in_is_one_its_tier_allows() -> None:
    assert allowed_priority(None, [INT, BAT]) is INT
    assert allowed_priority(None, [BAT]) is BAT
    assert allowed_priority(BAT, [INT, BAT]) is BAT
    assert allowed_priority(INT, [BAT]) is None


def test_lanes_and_weights_are_set_per_tier_with_the_top_level_ones_as_default() -> None:
    policy = QuotaPolicy(
        weight=2.0,
        tiers={"anonymous": QuotaTier(priorities=[BAT], weight=0.5), "password": QuotaTier()},
    )
    assert policy.priorities == [INT, BAT] and policy.weight == 2.0
    anonymous = policy.for_provider("anonymous")
    assert anonymous.priorities == [BAT] and anonymous.weight == 0.5
    password = policy.for_provider("password")
    assert password.priorities == [INT, BAT] and password.weight == 2.0


# -- the capacity queue and the redriver follow the rule -------------------------------------------


def test_a_freed_slot_goes_to_an_interactive_push_before_batch_pushes_that_waited_longer() -> None:
    cap = Capacity(1, aging_seconds=60)
    slot = cap.acquire("p", "bulk", 0, priority=BAT)
    assert slot is not None
    got: list[str] = []

    def wait(uid: str, priority: Priority) -> None:
        s = cap.acquire("p", uid, 5, priority=priority)
        if s is not None:
            got.append(uid)
            cap.release(s)

    threads = [threading.Thread(target=wait, args=("bulk", BAT))]
    threads[0].start()
    while cap.waiting() < 1:
        time.sleep(0.01)
    threads.append(threading.Thread(target=wait, args=("app", INT)))
    threads[1].start()
    while cap.waiting() < 2:
        time.sleep(0.01)
    cap.release(slot)
    for t in threads:
        t.join()
    assert got == ["app", "bulk"]


def test_the_redriver_orders_queued_jobs_by_lane_then_weighted_share() -> None:
    now = datetime.now(UTC)

    def c(job: str, uid: str, age: float, priority: Priority, weight: float = 1.0) -> Candidate:
        message = JobMessage(job_id=job, pipeline="p")
        return Candidate(message, uid, now - timedelta(seconds=age), priority, weight)

    batch = [c(f"b{i}", "bulk", 10 - i, BAT) for i in range(5)]
    app = [c("i0", "app", 1, INT), c("i1", "app", 0.5, INT)]
    ids = [x.message.job_id for x in fair_order([*batch, *app], Capacity(2, aging_seconds=60))]
    assert ids[:2] == ["i0", "i1"] and ids[2:] == [f"b{i}" for i in range(5)]


def test_a_batch_push_that_waited_past_the_aging_time_since_it_was_published_competes_as_interactive() -> (
    None
):
    from gpu_service.push import waited_since

    published = (datetime.now(UTC) - timedelta(seconds=90)).isoformat()
    assert 89 < waited_since(published) < 120 and waited_since("not a time") == 0.0
    cap = Capacity(1, aging_seconds=60)
    slot = cap.acquire("p", "app", 0)
    assert slot is not None
    got: list[str] = []

    def wait(uid: str, priority: Priority, waited: float) -> None:
        s = cap.acquire("p", uid, 5, priority=priority, waited=waited)
        if s is not None:
            got.append(uid)
            cap.release(s)

    # the interactive user already ran a unit; the aged batch user ran none: fair share picks it
    threads = [
        threading.Thread(target=wait, args=("app", INT, 0.0)),
        threading.Thread(target=wait, args=("bulk", BAT, waited_since(published))),
    ]
    for t in threads:
        t.start()
        while cap.waiting() < threads.index(t) + 1:
            time.sleep(0.01)
    cap.release(slot)
    for t in threads:
        t.join()
    assert got == ["bulk", "app"]
