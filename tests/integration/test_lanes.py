"""Priority lanes and weighted fair share on the emulators (core/lanes.py): interactive work
starts before a batch backlog that came first, batch work that waited past its aging time is not
starved, users share the slots by their tiers' weights, and a lane a tier does not allow is
refused. The handler, the worker, its capacity and its redriver run in this process
(devkit/lanes_rig.py); the order is read from the jobs' ``startedAt``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from core.contract import JobStatus
from core.lanes import Priority
from core.quota import QuotaPolicy, QuotaTier
from devkit.firebase_auth import new_email, sign_up
from devkit.lanes_rig import ensure_topic, make_lanes_rig, start_order
from infra.localstack.stack import LocalStack
from infra.settings import Settings

pytestmark = pytest.mark.pipelines("flaky")

INTERACTIVE, BATCH = Priority.INTERACTIVE, Priority.BATCH
OPEN = QuotaPolicy(max_unfinished=200, max_daily=None, tiers={})


@pytest.fixture(scope="module")
def topic(settings: Settings) -> Iterator[None]:
    ensure_topic(settings)
    yield


def test_interactive_jobs_start_before_a_batch_backlog_that_came_first_and_the_backlog_drains(
    settings: Settings, topic: None, uid: str
) -> None:
    lanes = make_lanes_rig(settings, slots=1, aging_seconds=600, quotas=OPEN)
    bulk = [lanes.submit(f"{uid}-bulk", 0.05, BATCH) for _ in range(8)]
    app = [lanes.submit(f"{uid}-app", 0.05, INTERACTIVE) for _ in range(2)]
    with lanes.running():
        jobs = lanes.wait_final(bulk + app)
    assert all(j.status is JobStatus.SUCCEEDED for j in jobs)
    assert [lanes.job(j).priority for j in (bulk[0], app[0])] == [BATCH, INTERACTIVE]
    order = start_order(list(zip(bulk + app, jobs, strict=True)))
    assert order[:2] == app  # both interactive jobs first, although every batch job was older
    assert order[2:] == bulk  # then the backlog, oldest first


def test_batch_work_past_its_aging_time_is_not_starved_by_interactive_work(
    settings: Settings, topic: None, uid: str
) -> None:
    lanes = make_lanes_rig(settings, slots=1, aging_seconds=1.0, quotas=OPEN)
    bulk = [lanes.submit(f"{uid}-bulk", 0.05, BATCH) for _ in range(3)]
    time.sleep(1.5)  # the batch jobs age
    app = [lanes.submit(f"{uid}-app", 0.05, INTERACTIVE) for _ in range(6)]
    with lanes.running():
        jobs = lanes.wait_final(bulk + app)
    order = start_order(list(zip(bulk + app, jobs, strict=True)))
    # Aged, the batch user competes by fair share: the users alternate, and the batch backlog
    # is done long before the stream of interactive work.
    assert order[:6] == [app[0], bulk[0], app[1], bulk[1], app[2], bulk[2]]


def test_two_users_share_the_slots_by_their_tiers_weights_and_a_light_user_is_not_queued_behind_a_heavy_one(
    stack: LocalStack, settings: Settings, topic: None
) -> None:
    host = stack.env["FIREBASE_AUTH_EMULATOR_HOST"]
    quotas = QuotaPolicy(
        max_unfinished=200,
        max_daily=None,
        tiers={
            "password": QuotaTier(max_unfinished=200, max_daily=None, weight=3.0),
            "anonymous": QuotaTier(max_unfinished=200, max_daily=None, weight=1.0),
        },
    )
    lanes = make_lanes_rig(settings, slots=1, aging_seconds=600, quotas=quotas, with_tiers=True)
    gold, free = sign_up(host, new_email()), sign_up(host)
    heavy = [lanes.submit(gold.uid, 0.05) for _ in range(12)]
    light = [lanes.submit(free.uid, 0.05) for _ in range(4)]
    assert lanes.job(heavy[0]).share_weight == 3.0 and lanes.job(light[0]).share_weight == 1.0
    with lanes.running():
        jobs = lanes.wait_final(heavy + light)
    order = start_order(list(zip(heavy + light, jobs, strict=True)))
    owner = {**dict.fromkeys(heavy, "gold"), **dict.fromkeys(light, "free")}
    first = [owner[j] for j in order[:8]]
    # weights 3 and 1: of the first eight starts, six are the weight-3 user's and two the other's
    assert first.count("gold") == 6 and first.count("free") == 2, first
    assert all(j.status is JobStatus.SUCCEEDED for j in jobs)


def test_a_lane_the_users_tier_does_not_allow_is_refused_with_a_named_error(
    stack: LocalStack, settings: Settings, topic: None
) -> None:
    quotas = QuotaPolicy(
        max_unfinished=200,
        max_daily=None,
        tiers={"anonymous": QuotaTier(max_unfinished=200, max_daily=None, priorities=[BATCH])},
    )
    lanes = make_lanes_rig(settings, slots=1, aging_seconds=600, quotas=quotas, with_tiers=True)
    anonymous = sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])
    refused = lanes.job(lanes.submit(anonymous.uid, 0.05, INTERACTIVE))
    assert refused.status is JobStatus.REJECTED and refused.error is not None
    assert refused.error.code == "priority_not_allowed" and "batch" in refused.error.message
    assert refused.started_at is None
    # Without a priority, the job waits in the first lane the tier allows.
    queued = lanes.job(lanes.submit(anonymous.uid, 0.05))
    assert queued.status is JobStatus.QUEUED and queued.priority is BATCH
