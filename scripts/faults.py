"""Fault injection on the local stack: ``make faults``.

Runs a batch of jobs of the ``flaky`` stand-in pipeline (timed steps with progress; it counts its
starts and completions per job in files that survive a SIGKILL) while it:

* delivers every job message two or three times (extra publishes of the same message);
* kills the GPU service with SIGKILL while jobs run, then restarts it;
* makes some jobs fail transiently twice before succeeding, and some fail permanently;
* sends malformed push envelopes and poison messages;
* cancels some jobs while they run.

Then it lets the sweeper run and counts. The last line is ``lost=N double=N stuck=N``:
lost = jobs that never ended; double = jobs whose pipeline ran to completion more than once;
stuck = jobs still pending/queued/running after the sweep. All three must be 0 (exit 1 if not).
Figures go to ``bench/results/faults.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from google.cloud import pubsub_v1

from infra.client import Client
from infra.contract import FINAL_STATES, JobMessage, JobStatus
from infra.localstack.stack import REPO, LocalStack, StackConfig
from infra.settings import Settings
from tests.support.flaky import count, topology_with_flaky

RESULTS = REPO / "bench" / "results"
STACK_ENV = {
    "MAX_CONCURRENT_JOBS": "2",
    "LEASE_SECONDS": "6",
    "PROGRESS_MIN_INTERVAL_SECONDS": "0.3",
    "STALE_QUEUED_SECONDS": "8",
    "STALE_PENDING_SECONDS": "8",
    "PLUGINS": "tests.support.flaky:SPEC",
    "LOG_LEVEL": "INFO",
}


def plan(n: int, rng: random.Random) -> list[tuple[str, dict[str, object]]]:
    """(kind, inputs) for each job: mostly normal, some transient, permanent and cancelled."""
    kinds = ["normal"] * n
    for i in range(n):
        if i % 6 == 1:
            kinds[i] = "transient"
        elif i % 10 == 3:
            kinds[i] = "permanent"
        elif i % 7 == 5:
            kinds[i] = "cancel"
    jobs = []
    for kind in kinds:
        inputs: dict[str, object] = {"steps": rng.randint(20, 40), "step_seconds": 0.05}
        if kind == "transient":
            inputs["fail_times"] = 2
        elif kind == "permanent":
            inputs["fail_permanently"] = True
        elif kind == "cancel":
            inputs["steps"] = 200  # long enough to be caught running
        jobs.append((kind, inputs))
    return jobs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=240)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        state = tmp / "flaky"
        env = {**STACK_ENV, "PIPELINES__FLAKY__STATE_DIR": str(state)}
        config = StackConfig(
            state_dir=tmp / "stack", env=env, enabled_pipelines=["flaky"], schedule_interval_seconds=2.0
        )
        with LocalStack(config, topology_with_flaky()) as stack:
            os.environ.update({**stack.env, **env})
            return run(
                stack, Client.from_settings(Settings()), state, plan(args.jobs, rng), rng, args.timeout
            )


def run(
    stack: LocalStack,
    client: Client,
    state: Path,
    jobs: list[tuple[str, dict[str, object]]],
    rng: random.Random,
    timeout: float,
) -> int:
    uid = f"faults-{int(time.time())}"
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(stack.config.project, "jobs-flaky")
    push_url = f"{stack.env['GPU_SERVICE_URL']}/push/flaky"
    t_start = time.monotonic()

    ids: dict[str, str] = {}
    for kind, inputs in jobs:
        ids[client.create_job(uid, "flaky", inputs)] = kind

    # Every message delivered two or three times: the function's publish plus 1-2 more.
    extra = 0
    for job_id in ids:
        for _ in range(rng.randint(1, 2)):
            body = JobMessage(job_id=job_id, pipeline="flaky").model_dump_json(by_alias=True).encode()
            publisher.publish(topic, body, jobId=job_id, pipeline="flaky")
            extra += 1

    # Poison: junk on the topic, malformed envelopes straight at the service.
    poison = [b"not json", b"{}", b'{"jobId": "../../etc", "pipeline": "flaky"}']
    for data in poison:
        publisher.publish(topic, data)
    malformed = [b"", b"garbage", json.dumps({"message": {"data": "%%%"}}).encode()]
    malformed_codes = [httpx.post(push_url, content=m, timeout=10).status_code for m in malformed]

    # Cancel the "cancel" jobs once they run.
    cancel_ids = [j for j, k in ids.items() if k == "cancel"]
    cancelled_at: dict[str, float] = {}

    def canceller() -> None:
        deadline = time.monotonic() + 60
        while len(cancelled_at) < len(cancel_ids) and time.monotonic() < deadline:
            for job_id in cancel_ids:
                if job_id in cancelled_at:
                    continue
                job = client.get(job_id)
                if job and job.status is JobStatus.RUNNING:
                    client.cancel(job_id)
                    cancelled_at[job_id] = time.monotonic()
            time.sleep(0.1)

    threading.Thread(target=canceller, daemon=True).start()

    # Kill the GPU service while jobs run, then restart it.
    deadline = time.monotonic() + 60
    running: list[str] = []
    while time.monotonic() < deadline:
        running = [j for j in ids if (job := client.get(j)) and job.status is JobStatus.RUNNING]
        if len(running) >= 2:
            break
        time.sleep(0.1)
    t_kill = time.monotonic()
    stack.restart_gpu_service()  # SIGKILL, start again (model load included)
    t_restarted = time.monotonic()
    recovered_at: float | None = None
    attempts_at_kill = {j: client.get(j).attempt for j in running}  # type: ignore[union-attr]

    # Wait for every job to end.
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        docs = {j: client.get(j) for j in ids}
        if recovered_at is None and all(
            d and (d.status in FINAL_STATES or d.attempt > attempts_at_kill[j])
            for j, d in docs.items()
            if j in attempts_at_kill
        ):
            recovered_at = time.monotonic()
        if all(d and d.status in FINAL_STATES for d in docs.values()):
            break
        time.sleep(0.25)
    # Let the sweeper run at least twice more, then count.
    time.sleep(2 * stack.config.schedule_interval_seconds + 1)
    docs = {j: client.get(j) for j in ids}
    elapsed = time.monotonic() - t_start

    statuses = Counter(d.status.value if d and d.status else "missing" for d in docs.values())
    lost = sum(1 for d in docs.values() if d is None or d.status not in FINAL_STATES)
    stuck = sum(
        1 for d in docs.values() if d and d.status in (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING)
    )
    double = sum(1 for j in ids if count(state / f"{j}.completions") > 1)
    wrong = {
        j: (k, d.status.value if d and d.status else None)
        for j, k in ids.items()
        if (d := docs[j])
        and not (
            (k in ("normal", "transient") and d.status is JobStatus.SUCCEEDED)
            or (k == "permanent" and d.status is JobStatus.FAILED)
            or (k == "cancel" and d.status in (JobStatus.CANCELLED, JobStatus.SUCCEEDED))
        )
    }
    report = {
        "jobs_submitted": len(ids),
        "kinds": dict(Counter(ids.values())),
        "statuses": dict(statuses),
        "extra_deliveries_published": extra,
        "poison_messages_published": len(poison),
        "malformed_envelopes_answered": malformed_codes,
        "jobs_running_at_kill": len(attempts_at_kill),
        "restart_seconds": round(t_restarted - t_kill, 2),
        "recovery_seconds_after_kill": round(recovered_at - t_kill, 2) if recovered_at else None,
        "jobs_with_unexpected_outcome": wrong,
        "total_pipeline_starts": sum(count(state / f"{j}.starts") for j in ids),
        "elapsed_seconds": round(elapsed, 1),
        "lost": lost,
        "double": double,
        "stuck": stuck,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(report, indent=2) + "\n")

    print(f"jobs submitted:            {len(ids)}  {dict(Counter(ids.values()))}")
    for s in ("succeeded", "failed", "cancelled", "rejected"):
        print(f"  {s + ':':<24}{statuses.get(s, 0)}")
    print(f"extra deliveries:          {extra} (every message delivered 2-3 times)")
    print(
        f"poison / malformed:        {len(poison)} published / {len(malformed)} posted -> HTTP {malformed_codes}"
    )
    print(f"killed with SIGKILL while: {len(attempts_at_kill)} jobs were running")
    print(f"service restart:           {report['restart_seconds']} s (includes model load)")
    print(
        f"recovery after the kill:   {report['recovery_seconds_after_kill']} s (every job running at the kill taken over or ended)"
    )
    print(f"unexpected outcomes:       {wrong or 'none'}")
    print(f"elapsed:                   {report['elapsed_seconds']} s; written to {RESULTS / 'faults.json'}")
    print(f"lost={lost} double={double} stuck={stuck}")
    return 0 if lost == double == stuck == 0 and not wrong else 1


if __name__ == "__main__":
    raise SystemExit(main())
