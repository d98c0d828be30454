"""Priority lanes and fair share on the emulators: how soon interactive work starts behind a
batch backlog (against an idle system), that the backlog still drains meanwhile, and how users
share the slots (100 jobs against 2; weights 3 and 1). Prints the figures and writes
bench/results/lanes.json.

The functions' handler, the GPU worker, its capacity and its redriver run in this process
(devkit/lanes_rig.py) with the ``metered`` stand-in pipeline; the Auth emulator gives the users
their sign-in providers, so that the quota tiers' weights apply. A job's start is its
``startedAt`` (the claim's server time), its wait ``startedAt - queuedAt``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.contract import JobDoc, JobStatus
from core.lanes import Priority
from core.quota import QuotaPolicy, QuotaTier
from devkit.firebase_auth import new_email, sign_up
from devkit.lanes_rig import LanesRig, ensure_topic, make_lanes_rig, start_order
from infra.localstack.stack import LocalStack, StackConfig
from infra.settings import Settings

RESULTS = Path(__file__).parent / "results"
SLOTS = 2
OPEN = QuotaPolicy(max_unfinished=1000, max_daily=None, tiers={})


def _wait(job: JobDoc) -> float:
    assert job.started_at is not None and job.queued_at is not None, job
    return (job.started_at - job.queued_at).total_seconds()


def idle_start(settings: Settings, runs: int, seconds: float) -> dict[str, Any]:
    """Interactive jobs one at a time on an idle instance: queued -> started."""
    lanes = make_lanes_rig(settings, slots=SLOTS, aging_seconds=60, quotas=OPEN)
    waits = []
    with lanes.running():
        for n in range(runs):
            job_id = lanes.submit(f"idle-{n}", seconds, Priority.INTERACTIVE)
            (job,) = lanes.wait_final([job_id])
            waits.append(_wait(job))
    return {"runs": runs, "median_s": round(statistics.median(waits), 3), "max_s": round(max(waits), 3)}


def behind_backlog(
    settings: Settings, *, backlog: int, batch_seconds: float, interactive: int, same_user: bool
) -> dict[str, Any]:
    """``backlog`` batch jobs queued first; once they run, ``interactive`` jobs arrive one by one
    (of another user, or of the backlog's own user): their waits, and the backlog's progress."""
    lanes = make_lanes_rig(settings, slots=SLOTS, aging_seconds=60, quotas=OPEN)
    bulk_user = f"bulk-{time.monotonic_ns()}"
    app_user = bulk_user if same_user else f"app-{time.monotonic_ns()}"
    bulk = [lanes.submit(bulk_user, batch_seconds, Priority.BATCH, f"b{n}") for n in range(backlog)]
    app: list[str] = []
    with lanes.running():
        t0 = time.monotonic()
        while _done(lanes, bulk[: 4 * SLOTS]) < 2 * SLOTS:  # the backlog is draining
            time.sleep(0.1)
        done_before = _done_count(lanes, bulk)
        for n in range(interactive):
            app.append(lanes.submit(app_user, batch_seconds, Priority.INTERACTIVE, f"i{n}"))
            lanes.wait_final(app[-1:])
        done_after = _done_count(lanes, bulk)
        jobs = lanes.wait_final(bulk, timeout=1800)
        drained = time.monotonic() - t0
    waits = [_wait(j) for j in lanes.jobs(app)]
    statuses = {j.status for j in jobs}
    return {
        "backlog": backlog,
        "batch_job_seconds": batch_seconds,
        "interactive_jobs": interactive,
        "interactive_of_the_backlogs_user": same_user,
        "interactive_wait_median_s": round(statistics.median(waits), 3),
        "interactive_wait_max_s": round(max(waits), 3),
        "batch_jobs_ended_while_interactive_ran": done_after - done_before,
        "backlog_drained_s": round(drained, 1),
        "backlog_all_succeeded": statuses == {JobStatus.SUCCEEDED},
    }


def _done(lanes: LanesRig, ids: list[str]) -> int:
    return sum(1 for j in lanes.jobs(ids) if j.status is JobStatus.SUCCEEDED)


def _done_count(lanes: LanesRig, ids: list[str]) -> int:
    return sum(1 for j in lanes.jobs(ids) if (j.status or JobStatus.QUEUED).is_final)


def heavy_and_light(settings: Settings, heavy: int, light: int, seconds: float) -> dict[str, Any]:
    """Users with ``heavy`` and ``light`` jobs, equal weights, all queued before the start."""
    lanes = make_lanes_rig(settings, slots=SLOTS, aging_seconds=600, quotas=OPEN)
    h = [lanes.submit("heavy-user", seconds) for _ in range(heavy)]
    ll = [lanes.submit("light-user", seconds) for _ in range(light)]
    with lanes.running():
        jobs = lanes.wait_final(h + ll, timeout=1800)
    order = start_order(list(zip(h + ll, jobs, strict=True)))
    light_jobs = jobs[heavy:]
    return {
        "jobs": {"heavy": heavy, "light": light},
        "light_jobs_start_positions": sorted(order.index(j) + 1 for j in ll),
        "light_waits_s": [round(_wait(j), 3) for j in light_jobs],
        "heavy_wait_median_s": round(statistics.median(_wait(j) for j in jobs[:heavy]), 3),
    }


def weighted(stack: LocalStack, settings: Settings, jobs_each: int, seconds: float) -> dict[str, Any]:
    """A weight-3 user (password tier) and a weight-1 user (anonymous tier), each with a backlog."""
    quotas = QuotaPolicy(
        max_unfinished=1000,
        max_daily=None,
        tiers={
            "password": QuotaTier(max_unfinished=1000, max_daily=None, weight=3.0),
            "anonymous": QuotaTier(max_unfinished=1000, max_daily=None, weight=1.0),
        },
    )
    lanes = make_lanes_rig(settings, slots=SLOTS, aging_seconds=600, quotas=quotas, with_tiers=True)
    host = stack.env["FIREBASE_AUTH_EMULATOR_HOST"]
    gold, free = sign_up(host, new_email()), sign_up(host)
    g = [lanes.submit(gold.uid, seconds) for _ in range(jobs_each)]
    f = [lanes.submit(free.uid, seconds) for _ in range(jobs_each)]
    with lanes.running():
        ended = lanes.wait_final(g + f, timeout=1800)
    order = start_order(list(zip(g + f, ended, strict=True)))
    window = order[:jobs_each]  # while both users still have work waiting
    gold_starts = sum(1 for j in window if j in g)
    return {
        "weights": {"password": 3.0, "anonymous": 1.0},
        "jobs_each": jobs_each,
        "starts_counted": len(window),
        "weight_3_user_starts": gold_starts,
        "weight_1_user_starts": len(window) - gold_starts,
        "weight_3_share": round(gold_starts / len(window), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, default=200)
    parser.add_argument("--batch-seconds", type=float, default=0.2)
    parser.add_argument("--interactive", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        config = StackConfig(state_dir=Path(tmp) / "stack", start_gpu_service=False)
        with LocalStack(config) as stack:
            os.environ.update(stack.env)
            settings = Settings()
            ensure_topic(settings)
            seconds = args.batch_seconds
            report = {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU (shared)",
                "pipeline": "metered stand-in (sleeps), one job per model call",
                "slots": SLOTS,
                "path": "the redriver and the capacity queue (no push subscription)",
                "idle": idle_start(settings, 5, seconds),
                "backlog_other_user": behind_backlog(
                    settings,
                    backlog=args.backlog,
                    batch_seconds=seconds,
                    interactive=args.interactive,
                    same_user=False,
                ),
                "backlog_same_user": behind_backlog(
                    settings,
                    backlog=args.backlog,
                    batch_seconds=seconds,
                    interactive=args.interactive,
                    same_user=True,
                ),
                "heavy_and_light": heavy_and_light(settings, 100, 2, seconds),
                "weighted": weighted(stack, settings, 40, seconds),
            }
            idle = report["idle"]["median_s"]
            for key in ("backlog_other_user", "backlog_same_user"):
                report[key]["median_minus_idle_median_s"] = round(
                    report[key]["interactive_wait_median_s"] - idle, 3
                )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "lanes.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
