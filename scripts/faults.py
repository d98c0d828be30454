"""Fault injection on the local stack: ``make faults``.

Runs a batch of jobs of the ``flaky`` stand-in pipeline (timed steps with progress; it counts its
starts and completions per job in files that survive a SIGKILL) and of its multi-part sibling
``flakyparts`` (prepare, parts ``a`` and ``b`` in parallel, join) while it:

* delivers every job message two or three times (extra publishes of the same message);
* kills the GPU service with SIGKILL while jobs run, and again while parts run, restarting it;
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

from core.contract import FINAL_STATES, JobDoc, JobMessage, JobStatus
from core.routes import route
from infra.client import Client
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
    "PLUGINS": "tests.support.flaky:SPEC,tests.support.flaky:PARTS_SPEC",
    "LOG_LEVEL": "INFO",
}


Job = tuple[str, str, dict[str, object]]  # (kind, pipeline, inputs)


def plan(n: int, n_parts: int, rng: random.Random) -> list[Job]:
    """(kind, pipeline, inputs) for each job: mostly normal, some transient, permanent, cancelled;
    then multi-part jobs, some with a part failing transiently and one with a part failing for good."""
    kinds = ["normal"] * n
    for i in range(n):
        if i % 6 == 1:
            kinds[i] = "transient"
        elif i % 10 == 3:
            kinds[i] = "permanent"
        elif i % 7 == 5:
            kinds[i] = "cancel"
    jobs: list[Job] = []
    for kind in kinds:
        inputs: dict[str, object] = {"steps": rng.randint(20, 40), "step_seconds": 0.05}
        if kind == "transient":
            inputs["fail_times"] = 2
        elif kind == "permanent":
            inputs["fail_permanently"] = True
        elif kind == "cancel":
            inputs["steps"] = 200  # long enough to be caught running
        jobs.append((kind, "flaky", inputs))
    for i in range(n_parts):
        inputs = {"steps": rng.randint(20, 40), "step_seconds": 0.05}
        kind = "parts"
        if i % 3 == 1:
            kind, inputs["flaky_part"] = "parts-transient", rng.choice(["a", "b"])
        elif i == n_parts - 1:
            kind, inputs["fail_part"] = "parts-permanent", "b"
        jobs.append((kind, "flakyparts", inputs))
    rng.shuffle(jobs)  # so the kill finds single jobs and parts of multi-part jobs running
    return jobs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--parts-jobs", type=int, default=6)
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
            state_dir=tmp / "stack",
            env={**env, "PIPELINES__FLAKYPARTS__STATE_DIR": str(state)},
            enabled_pipelines=["flaky", "flakyparts"],
            schedule_interval_seconds=2.0,
        )
        with LocalStack(config, topology_with_flaky()) as stack:
            os.environ.update({**stack.env, **env})
            return run(
                stack,
                Client.from_settings(Settings()),
                state,
                plan(args.jobs, args.parts_jobs, rng),
                rng,
                args.timeout,
            )


def run(
    stack: LocalStack,
    client: Client,
    state: Path,
    jobs: list[Job],
    rng: random.Random,
    timeout: float,
) -> int:
    uid = f"faults-{int(time.time())}"
    publisher = pubsub_v1.PublisherClient()
    project = stack.config.project
    topic = publisher.topic_path(project, route("flaky").topic)
    push_url = stack.env["GPU_SERVICE_URL"] + route("flaky").push_path
    t_start = time.monotonic()

    ids: dict[str, str] = {}
    pipeline_of: dict[str, str] = {}
    for kind, pipeline, inputs in jobs:
        job_id = client.create_job(uid, pipeline, inputs)
        ids[job_id], pipeline_of[job_id] = kind, pipeline

    def publish(job_id: str, part: str | None = None) -> None:
        pipeline = pipeline_of[job_id]
        message = JobMessage(job_id=job_id, pipeline=pipeline, part=part)
        body = message.model_dump_json(by_alias=True).encode()
        publisher.publish(publisher.topic_path(project, route(pipeline, message.ref.lane).topic), body)

    # Every message delivered two or three times: the function's publish plus 1-2 more; parts
    # get one more delivery each once their job has fanned out.
    extra = 0
    for job_id in ids:
        for _ in range(rng.randint(1, 2)):
            publish(job_id)
            extra += 1

    def duplicate_parts() -> None:
        nonlocal extra
        waiting = {j for j, p in pipeline_of.items() if p == "flakyparts"}
        deadline = time.monotonic() + 90
        while waiting and time.monotonic() < deadline:
            for job_id in sorted(waiting):
                job = client.get(job_id)
                if job and (job.parts or (job.status and job.status.is_final)):
                    for part in job.parts or {}:
                        publish(job_id, part)
                        extra += 1
                    waiting.discard(job_id)
            time.sleep(0.2)

    threading.Thread(target=duplicate_parts, daemon=True).start()

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

    # Kill the GPU service with SIGKILL twice: once while single jobs run, once while parts of
    # multi-part jobs run (whichever comes first), restarting it each time.
    kills: list[dict[str, object]] = []
    pending_recovery: list[tuple[float, dict[tuple[str, str | None], int], dict[str, object]]] = []
    for target in ("job", "part"):
        started = time.monotonic()
        at_kill: dict[tuple[str, str | None], int] = {}
        while time.monotonic() < started + 40:
            at_kill = running_attempts(client, ids)
            if any((part is None) == (target == "job") for _, part in at_kill):
                break
            time.sleep(0.05)
        if not at_kill:
            continue
        t_kill = time.monotonic()
        stack.restart_gpu_service()  # SIGKILL, start again (model load included)
        kill: dict[str, object] = {
            "running_at_kill": sorted(f"{ids[j]}:{j}" + (f"/{p}" if p else "") for j, p in at_kill),
            "restart_seconds": round(time.monotonic() - t_kill, 2),
        }
        kills.append(kill)
        pending_recovery.append((t_kill, at_kill, kill))

    # Wait for every job to end, noting when each kill's victims were taken over or ended.
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        docs = {j: client.get(j) for j in ids}
        for t_kill, at_kill, kill in pending_recovery:
            if "recovery_seconds" not in kill and all(
                moved_on(docs[j], part, attempt) for (j, part), attempt in at_kill.items()
            ):
                kill["recovery_seconds"] = round(time.monotonic() - t_kill, 2)
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
    double = sum(
        1
        for j in ids
        if count(state / f"{j}.completions") > 1
        or any(count(state / f"{j}.{part}.completions") > 1 for part in ("a", "b"))
    )
    wrong = {
        j: (k, d.status.value if d and d.status else None)
        for j, k in ids.items()
        if (d := docs[j])
        and not (
            (k in ("normal", "transient", "parts", "parts-transient") and d.status is JobStatus.SUCCEEDED)
            or (k in ("permanent", "parts-permanent") and d.status is JobStatus.FAILED)
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
        "kills": kills,
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
    for n, kill in enumerate(kills, 1):
        victims = kill["running_at_kill"]
        assert isinstance(victims, list)
        what = Counter("part" if "/" in v else "job" for v in victims)
        print(
            f"SIGKILL {n}:                 while {what['job']} jobs and {what['part']} parts ran; "
            f"restart {kill['restart_seconds']} s; all taken over or ended "
            f"{kill.get('recovery_seconds', 'never')} s after the kill"
        )
    print(f"unexpected outcomes:       {wrong or 'none'}")
    print(f"elapsed:                   {report['elapsed_seconds']} s; written to {RESULTS / 'faults.json'}")
    print(f"lost={lost} double={double} stuck={stuck}")
    return 0 if lost == double == stuck == 0 and not wrong else 1


def running_attempts(client: Client, ids: dict[str, str]) -> dict[tuple[str, str | None], int]:
    """Every job, or part of a multi-part job, that is running now, with its attempt."""
    found: dict[tuple[str, str | None], int] = {}
    for job_id in ids:
        job = client.get(job_id)
        if not job or job.status is not JobStatus.RUNNING:
            continue
        if job.parts:
            for part, state in job.parts.items():
                if state.status is JobStatus.RUNNING:
                    found[(job_id, part)] = state.attempt
        elif job.lease:
            found[(job_id, None)] = job.attempt
    return found


def moved_on(job: JobDoc | None, part: str | None, attempt: int) -> bool:
    """Whether what was running at the kill has ended or been taken over by a new attempt."""
    if job is None:
        return False
    if job.status in FINAL_STATES:
        return True
    if part is None:
        return job.attempt > attempt
    state = (job.parts or {}).get(part)
    return state is not None and (state.status.is_final or state.attempt > attempt)


if __name__ == "__main__":
    raise SystemExit(main())
