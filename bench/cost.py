"""Cost figures on the emulators: how close usage is to the measured model time, that batch shares
and the daily roll-up add up, how fast a repeated submission is reused, and how far past its
maximum a run is stopped. Prints them and writes bench/results/cost.json.

The functions' handler and the GPU worker run in this process (devkit/cost_rig.py) with the
``metered`` stand-in pipeline, which measures its own model call (``outputs.modelSeconds``): the
reference the usage is compared with.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from core.contract import JobStatus
from core.quota import QuotaPolicy
from core.routes import route
from devkit.cost_rig import Rig, make_rig
from infra.localstack.stack import LocalStack, StackConfig
from infra.settings import Batching, Settings

RESULTS = Path(__file__).parent / "results"


def batched_accuracy(rig: Rig, rounds: int) -> dict[str, Any]:
    """Rounds of four jobs (work 1, 1, 2, 4) that meet in one call: usage vs the call's own time."""
    errors, sum_errors, sizes = [], [], []
    for n in range(rounds):
        uid = f"bench-{uuid.uuid4().hex[:8]}"
        ids = [rig.submit(uid, {"seconds": 0.5, "work": w, "label": f"r{n}"})[0] for w in (1, 1, 2, 4)]
        rig.run(*ids)
        jobs = [rig.job(j) for j in ids]
        calls: dict[float, list[Any]] = {}
        for job in jobs:
            assert job.usage is not None and job.usage.batch is not None, job
            calls.setdefault(job.usage.batch.seconds, []).append(job)
        for seconds, members in calls.items():
            measured = (members[0].outputs or {})["model_seconds"]
            errors.append(abs(seconds - measured))
            sum_errors.append(abs(sum(j.usage.gpu_seconds for j in members) - seconds))
            sizes.append(len(members))
    return {
        "rounds": rounds,
        "calls": len(errors),
        "mean_batch_size": round(statistics.mean(sizes), 2),
        "max_abs_error_vs_model_time_ms": round(1000 * max(errors), 3),
        "median_abs_error_vs_model_time_ms": round(1000 * statistics.median(errors), 3),
        "max_shares_minus_call_seconds": max(sum_errors),
    }


def single_accuracy(rig: Rig, runs: int) -> dict[str, Any]:
    errors = []
    for n in range(runs):
        uid = f"bench-{uuid.uuid4().hex[:8]}"
        job_id, _ = rig.submit(uid, {"seconds": 0.3, "label": f"s{n}"})
        rig.run(job_id)
        job = rig.job(job_id)
        assert job.usage is not None
        errors.append(abs(job.usage.gpu_seconds - (job.outputs or {})["model_seconds"]))
    return {
        "runs": runs,
        "max_abs_error_vs_model_time_ms": round(1000 * max(errors), 3),
        "median_abs_error_vs_model_time_ms": round(1000 * statistics.median(errors), 3),
    }


def rollup(rig: Rig, jobs: int) -> dict[str, Any]:
    uid = f"bench-{uuid.uuid4().hex[:8]}"
    ids = [rig.submit(uid, {"seconds": 0.05 * (1 + n % 3), "label": f"u{n}"})[0] for n in range(jobs)]
    for start in range(0, jobs, 4):
        rig.run(*ids[start : start + 4])
    total = sum((rig.job(j).usage or _zero()).gpu_seconds for j in ids)
    day = rig.day(uid)
    return {
        "jobs": jobs,
        "ledger_jobs": day.get("jobs"),
        "sum_of_jobs_gpu_seconds": round(total, 6),
        "ledger_gpu_seconds": round(day.get("gpuSeconds", 0.0), 6),
        "abs_difference": abs(total - day.get("gpuSeconds", 0.0)),
    }


def _zero() -> Any:
    from core.contract import Usage

    return Usage()


def reuse(rig: Rig, runs: int) -> dict[str, Any]:
    latencies, gpu = [], []
    for n in range(runs):
        uid = f"bench-{uuid.uuid4().hex[:8]}"
        data = f"content {uuid.uuid4()}".encode()
        first, _ = rig.submit(
            uid, {"files": {"in": rig.upload(uid, "a.bin", data)}, "seconds": 0.2, "label": str(n)}
        )
        rig.run(first)
        uri = rig.upload(uid, "b.bin", data)
        t0 = time.perf_counter()
        again, moved = rig.submit(uid, {"files": {"in": uri}, "seconds": 0.2, "label": str(n)})
        latencies.append(time.perf_counter() - t0)
        assert moved is JobStatus.SUCCEEDED, moved
        job = rig.job(again)
        assert job.usage is not None and job.reused_from == first
        gpu.append(job.usage.gpu_seconds)
    return {
        "runs": runs,
        "submit_to_succeeded_median_s": round(statistics.median(latencies), 3),
        "submit_to_succeeded_max_s": round(max(latencies), 3),
        "gpu_seconds_of_reused_jobs": max(gpu),
    }


def max_run(rig: Rig, limit: float, runs: int) -> dict[str, Any]:
    capped = make_rig(rig.settings, uuid.uuid4().hex[:8], pipeline_max_run_seconds={"metered": limit})
    overshoot, charged = [], []
    for _ in range(runs):
        uid = f"bench-{uuid.uuid4().hex[:8]}"
        job_id, _ = capped.submit(uid, {"seconds": 10})
        capped.run(job_id)
        job = capped.job(job_id)
        assert job.error is not None and job.error.code == "max_run_time_exceeded", job.error
        assert job.usage is not None and job.started_at is not None and job.finished_at is not None
        # the limit is on the attempt's wall time from its claim (batch wait and load included)
        overshoot.append((job.finished_at - job.started_at).total_seconds() - limit)
        charged.append(job.usage.gpu_seconds)
    return {
        "limit_s": limit,
        "runs": runs,
        "started_to_finished_minus_limit_max_s": round(max(overshoot), 3),
        "gpu_seconds_charged_max": round(max(charged), 3),
    }


def budget(rig: Rig) -> dict[str, Any]:
    tight = make_rig(rig.settings, uuid.uuid4().hex[:8], quotas=QuotaPolicy(gpu_seconds_daily=1.0))
    uid = f"bench-{uuid.uuid4().hex[:8]}"
    outcomes = []
    for n in range(5):
        job_id, moved = tight.submit(uid, {"seconds": 0.3, "label": f"b{n}"})
        if moved is JobStatus.QUEUED:
            tight.run(job_id)
        job = tight.job(job_id)
        outcomes.append(job.error.code if job.error else job.status.value if job.status else "?")
    day = tight.day(uid)
    return {"budget_s": 1.0, "outcomes": outcomes, "gpu_seconds_used": round(day.get("gpuSeconds", 0.0), 3)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        config = StackConfig(state_dir=Path(tmp) / "stack", start_gpu_service=False, start_edge=False)
        with LocalStack(config) as stack:
            os.environ.update(stack.env)
            settings = Settings()
            publisher = pubsub_v1.PublisherClient()
            with contextlib.suppress(gexc.AlreadyExists):
                publisher.create_topic(
                    name=publisher.topic_path(settings.google_cloud_project, route("metered").topic)
                )
            rig = make_rig(settings, uuid.uuid4().hex[:8])
            alone = make_rig(settings, uuid.uuid4().hex[:8], batching={"metered": Batching(max_batch=1)})
            report = {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU (shared)",
                "pipeline": "metered stand-in (sleeps; measures its own call)",
                "batched": batched_accuracy(rig, args.rounds),
                "single": single_accuracy(alone, args.rounds),
                "rollup": rollup(rig, 12),
                "reuse": reuse(rig, args.rounds),
                "max_run": max_run(rig, 0.5, 3),
                "budget": budget(rig),
            }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "cost.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
