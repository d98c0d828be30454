"""Fault injection on the local stack: ``make faults``.

A burst of jobs far deeper than the service's capacity, across two pipelines of different speeds
(``flaky``: ~0.05 s jobs; ``flakyslow``: ~0.5 s jobs) and the multi-part ``flakyparts``, from a
flooding user and a few users with a single job each, while it:

* delivers every job message two or three times (extra publishes of the same message), and every
  part message once more;
* kills the GPU service with SIGKILL twice mid-burst, restarting it each time;
* makes some jobs fail transiently twice before succeeding, some fail permanently, cancels some
  while they run;
* mixes in poison: junk messages, malformed push envelopes, job documents that do not fit the
  contract and drop uploads with metadata that cannot be stored.

The stand-ins count their starts and completions per job in files that survive a SIGKILL. The
last line is ``lost=N double=N stuck=N``: lost = jobs that never ended; double = jobs whose
pipeline ran to completion more than once; stuck = jobs still pending/queued/running at the end.
All three must be 0 (exit 1 if not). It also prints the burst figures — time in ``queued``
(p50/p99), the slots' busy fraction, and the longest a job waited in ``queued`` while a slot was
free — and writes them with everything else to ``bench/results/faults.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from google.cloud import firestore, pubsub_v1

from core.contract import FINAL_STATES, JobDoc, JobMessage, JobStatus, read_job
from core.routes import route
from devkit.flaky import count, topology_with_flaky
from functions.handlers import derived_job_id
from infra.client import Client
from infra.localstack.stack import REPO, LocalStack, StackConfig
from infra.settings import Settings

RESULTS = REPO / "bench" / "results"
LEASE_SECONDS = 6
STACK_ENV = {
    # One flooder creates the whole burst: this run is about delivery faults, not quotas.
    "QUOTAS": '{"enabled": false}',
    "MAX_CONCURRENT_JOBS": "2",
    "LEASE_SECONDS": str(LEASE_SECONDS),
    "PROGRESS_MIN_INTERVAL_SECONDS": "0.3",
    "STALE_QUEUED_SECONDS": "60",
    "STALE_PENDING_SECONDS": "8",
    "REDRIVE_AFTER_SECONDS": "2",
    "REDRIVE_POLL_SECONDS": "1",
    "PLUGINS": "devkit.flaky:SPEC,devkit.flaky:SLOW_SPEC,devkit.flaky:PARTS_SPEC",
    "LOG_LEVEL": "WARNING",
}
PIPELINES = ["flaky", "flakyslow", "flakyparts"]
SUCCEEDS = {"fast", "slow", "transient", "parts", "parts-transient", "lone"}
FAILS = {"permanent", "parts-permanent"}
REJECTED = {"poison-doc", "poison-upload"}


@dataclass
class Planned:
    kind: str
    pipeline: str
    inputs: dict[str, Any]
    uid: str


def plan(n_fast: int, n_slow: int, n_parts: int, rng: random.Random, flooder: str) -> list[Planned]:
    """The burst: mostly the flooder's fast and slow jobs, with failures, cancels and multi-part
    jobs sprinkled in (shuffled, so the kills find every kind running)."""
    jobs: list[Planned] = []
    for i in range(n_fast):
        kind, inputs = "fast", {"steps": 1, "step_seconds": 0.05}
        if i % 25 == 1:
            kind, inputs = "transient", {"steps": 2, "step_seconds": 0.05, "fail_times": 2}
        elif i % 60 == 3:
            kind, inputs = "permanent", {"fail_permanently": True}
        elif i % 70 == 5:
            kind, inputs = "cancel", {"steps": 200, "step_seconds": 0.05}  # long enough to be caught
        jobs.append(Planned(kind, "flaky", inputs, flooder))
    for _ in range(n_slow):
        jobs.append(
            Planned("slow", "flakyslow", {"steps": rng.randint(8, 12), "step_seconds": 0.05}, flooder)
        )
    for i in range(n_parts):
        inputs = {"steps": rng.randint(4, 8), "step_seconds": 0.05}
        kind = "parts"
        if i % 3 == 1:
            kind, inputs["flaky_part"] = "parts-transient", rng.choice(["a", "b"])
        elif i == n_parts - 1:
            kind, inputs["fail_part"] = "parts-permanent", "b"
        jobs.append(Planned(kind, "flakyparts", inputs, flooder))
    rng.shuffle(jobs)
    return jobs


@dataclass
class Sample:
    at: datetime
    running: int
    slots: int
    up: bool


@dataclass
class Sampler:
    """Polls the service's /healthz: how many slots are busy, over time."""

    url: str
    period: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._loop, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        with httpx.Client(timeout=2) as http:
            while not self._stop.wait(self.period):
                now = datetime.now(UTC)
                try:
                    cap = http.get(self.url).json()["capacity"]
                    self.samples.append(Sample(now, int(cap["running"]), int(cap["slots"]), True))
                except Exception:
                    self.samples.append(Sample(now, 0, 0, False))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fast", type=int, default=380, help="flaky jobs (about 0.05 s each)")
    parser.add_argument("--slow", type=int, default=100, help="flakyslow jobs (about 0.5 s each)")
    parser.add_argument("--parts", type=int, default=20, help="multi-part flakyparts jobs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--no-poison", action="store_true", help="leave out the poison (to compare with older code)"
    )
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        state = tmp / "flaky"
        env = {
            **STACK_ENV,
            **{f"PIPELINES__{p.upper()}__STATE_DIR": str(state) for p in PIPELINES},
        }
        config = StackConfig(
            state_dir=tmp / "stack", env=env, enabled_pipelines=PIPELINES, schedule_interval_seconds=2.0
        )
        with LocalStack(config, topology_with_flaky()) as stack:
            os.environ.update({**stack.env, **env})
            return run(stack, Client.from_settings(Settings()), state, args, rng)


def run(stack: LocalStack, client: Client, state: Path, args: argparse.Namespace, rng: random.Random) -> int:
    stamp = int(time.time())
    flooder = f"flooder-{stamp}"
    jobs = plan(args.fast, args.slow, args.parts, rng, flooder)
    publisher = pubsub_v1.PublisherClient()
    project = stack.config.project
    service = stack.env["GPU_SERVICE_URL"]
    sampler = Sampler(service + "/healthz")
    sampler.start()
    t_start = time.monotonic()

    planned: dict[str, Planned] = {}
    for job in jobs:
        planned[client.create_job(job.uid, job.pipeline, job.inputs)] = job
    created_seconds = time.monotonic() - t_start

    def publish(job_id: str, part: str | None = None) -> None:
        p = planned[job_id]
        message = JobMessage(job_id=job_id, pipeline=p.pipeline, part=part, uid=p.uid)
        topic = publisher.topic_path(project, route(p.pipeline, message.ref.lane).topic)
        publisher.publish(topic, message.model_dump_json(by_alias=True).encode())

    # Every message delivered two or three times: the function's publish plus 1-2 more.
    extra = 0
    for job_id in list(planned):
        for _ in range(rng.randint(1, 2)):
            publish(job_id)
            extra += 1

    # A few users with one job each arrive in the middle of the flood.
    for n in range(3):
        uid = f"lone-{stamp}-{n}"
        planned[client.create_job(uid, "flaky", {"steps": 1, "step_seconds": 0.05})] = Planned(
            "lone", "flaky", {}, uid
        )

    # Poison: junk messages, malformed envelopes, documents and uploads that cannot be jobs.
    junk = [b"not json", b"{}", b'{"jobId": "../../etc", "pipeline": "flaky"}']
    for data in junk:
        publisher.publish(publisher.topic_path(project, route("flaky").topic), data)
    malformed = [b"", b"garbage", json.dumps({"message": {"data": "%%%"}}).encode()]
    malformed_codes = [
        httpx.post(service + route("flaky").push_path, content=m, timeout=60).status_code for m in malformed
    ]
    poison_docs: list[dict[str, Any]] = (
        []
        if args.no_poison
        else [
            {"uid": flooder, "pipeline": "flaky", "inputs": {}, "status": "pending", "createdAt": "garbage"},
            {"uid": flooder, "pipeline": "flaky", "inputs": "not a map", "status": "pending"},
            {"uid": flooder, "pipeline": "x" * 100_000, "inputs": {}, "status": "pending"},
            {"uid": "not a uid;", "pipeline": "flaky", "inputs": {}, "status": "pending"},
            {"uid": flooder, "pipeline": "flaky", "inputs": {"steps": "many"}, "status": "pending"},
        ]
    )
    for n, doc in enumerate(poison_docs):
        job_id = f"poison-{stamp}-{n}"
        client.jobs().document(job_id).set(doc)
        planned[job_id] = Planned("poison-doc", "flaky", {}, flooder)
    bucket = client.gcs.bucket(client.settings.media_bucket)
    bad_uploads: list[dict[str, str]] = (
        []
        if args.no_poison
        else [{"inputs": '{"a":' * 200 + "1" + "}" * 200}, {"inputs": "not json"}, {"jobId": "bad id!"}]
    )
    for n, metadata in enumerate(bad_uploads):
        blob = bucket.blob(f"uploads/{flooder}/flaky/poison-{n}.bin")
        blob.metadata = metadata
        blob.upload_from_string(b"poison", content_type="application/octet-stream")
        blob.reload()
        job_id = derived_job_id(bucket.name, blob.name, str(blob.generation))
        planned[job_id] = Planned("poison-upload", "flaky", {}, flooder)

    ids = list(planned)

    def snapshot() -> dict[str, JobDoc]:
        found: dict[str, JobDoc] = {}
        for uid in {p.uid for p in planned.values()}:
            query = client.jobs().where(filter=firestore.FieldFilter("uid", "==", uid))
            for snap in query.stream():
                if snap.id in planned:
                    found[snap.id] = read_job(snap.to_dict() or {})
        for job_id in ids:
            if job_id not in found and planned[job_id].kind in REJECTED:
                snap = client.jobs().document(job_id).get()
                if snap.exists:
                    found[job_id] = read_job(snap.to_dict() or {})
        return found

    # Parts get one more delivery each, once their job has fanned out; the "cancel" jobs are
    # cancelled once they run.
    parted: set[str] = set()
    cancelled: set[str] = set()
    stop_helpers = threading.Event()

    def helpers() -> None:
        nonlocal extra
        while not stop_helpers.wait(0.5):
            docs = snapshot()
            for job_id, job in docs.items():
                p = planned[job_id]
                if p.pipeline == "flakyparts" and job.parts and job_id not in parted:
                    for part in job.parts:
                        publish(job_id, part)
                        extra += 1
                    parted.add(job_id)
                if p.kind == "cancel" and job.status is JobStatus.RUNNING and job_id not in cancelled:
                    client.cancel(job_id)
                    cancelled.add(job_id)

    threading.Thread(target=helpers, daemon=True).start()

    # SIGKILL twice mid-burst: after about a third and two thirds of the jobs ended.
    kills: list[dict[str, Any]] = []
    killed_pids: set[str] = set()
    pending_recovery: list[tuple[float, dict[tuple[str, str | None], int], dict[str, Any]]] = []
    deadline = time.monotonic() + args.timeout
    for fraction in (1 / 3, 2 / 3):
        while time.monotonic() < deadline:
            docs = snapshot()
            ended = sum(1 for d in docs.values() if d.status in FINAL_STATES)
            running = running_attempts(docs)
            if ended >= fraction * len(ids) and running:
                break
            time.sleep(0.2)
        t_kill = time.monotonic()
        killed_pids.add(str(stack.pid("gpu_service")))
        stack.restart_gpu_service()  # SIGKILL, then start again
        kill: dict[str, Any] = {
            "after_ended": ended,
            "running_at_kill": sorted(f"{j}" + (f"/{p}" if p else "") for j, p in running),
            "restart_seconds": round(time.monotonic() - t_kill, 2),
        }
        kills.append(kill)
        pending_recovery.append((t_kill, running, kill))

    # Wait for every job to end, noting when each kill's victims were taken over or ended.
    last_kill = time.monotonic()
    drained_at: float | None = None
    while time.monotonic() < deadline:
        docs = snapshot()
        for t_kill, at_kill, kill in pending_recovery:
            if "recovery_seconds" not in kill and all(
                moved_on(docs.get(j), part, attempt) for (j, part), attempt in at_kill.items()
            ):
                kill["recovery_seconds"] = round(time.monotonic() - t_kill, 2)
        if len(docs) == len(ids) and all(d.status in FINAL_STATES for d in docs.values()):
            drained_at = time.monotonic()
            break
        time.sleep(0.5)
    stop_helpers.set()
    # Let the sweeper run at least twice more, then count.
    time.sleep(2 * stack.config.schedule_interval_seconds + 1)
    sampler.stop()
    docs = snapshot()
    elapsed = time.monotonic() - t_start

    statuses = Counter(d.status.value if d.status else "pending" for d in docs.values())
    lost = sum(1 for j in ids if j not in docs or docs[j].status not in FINAL_STATES)
    stuck = sum(
        1
        for d in docs.values()
        if d.effective_status in (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING)
    )

    # A pipeline that completed in a process SIGKILLed before it could commit is run again: that
    # is at-least-once execution with an exactly-once effect (only a commit is visible), so it is
    # counted apart. "double" is a unit that completed twice in processes that lived on.
    def completions(path: Path) -> list[str]:
        return path.read_text().split() if path.exists() else []

    files = {
        j: [state / f"{j}.completions", *(state / f"{j}.{part}.completions" for part in ("a", "b"))]
        for j in ids
    }
    double_ids = [
        j for j in ids if any(len([p for p in completions(f) if p not in killed_pids]) > 1 for f in files[j])
    ]
    rerun_after_crash = [
        j for j in ids if j not in double_ids and any(len(completions(f)) > 1 for f in files[j])
    ]
    double = len(double_ids)
    wrong = {
        j: (p.kind, docs[j].status.value if j in docs and docs[j].status else None)
        for j, p in planned.items()
        if not (
            j in docs
            and (
                (p.kind in SUCCEEDS and docs[j].status is JobStatus.SUCCEEDED)
                or (p.kind in FAILS and docs[j].status is JobStatus.FAILED)
                or (p.kind in REJECTED and docs[j].status is JobStatus.REJECTED)
                or (p.kind == "cancel" and docs[j].status in (JobStatus.CANCELLED, JobStatus.SUCCEEDED))
            )
        )
    }
    burst = burst_figures(docs, planned, sampler.samples)
    report = {
        "jobs": len(ids),
        "kinds": dict(Counter(p.kind for p in planned.values())),
        "pipelines": dict(Counter(p.pipeline for p in planned.values() if p.kind not in REJECTED)),
        "statuses": dict(statuses),
        "create_seconds": round(created_seconds, 1),
        "extra_deliveries_published": extra,
        "junk_messages_published": len(junk),
        "malformed_envelopes_answered": malformed_codes,
        "kills": kills,
        "seconds_from_last_kill_to_last_job_ended": round(drained_at - last_kill, 1) if drained_at else None,
        "burst": burst,
        "jobs_with_unexpected_outcome": wrong,
        "rerun_after_a_crash_before_commit": rerun_after_crash,
        "ran_twice": {
            j: {
                "kind": planned[j].kind,
                "attempt": docs[j].attempt if j in docs else None,
                "completions_by_pid": [completions(f) for f in files[j]],
            }
            for j in double_ids
        },
        "total_pipeline_starts": sum(count(state / f"{j}.starts") for j in ids),
        "elapsed_seconds": round(elapsed, 1),
        "lost": lost,
        "double": double,
        "stuck": stuck,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(report, indent=2) + "\n")

    print(f"jobs:                      {len(ids)}  {report['kinds']}")
    print(f"  per pipeline:            {report['pipelines']}")
    for s in ("succeeded", "failed", "cancelled", "rejected"):
        print(f"  {s + ':':<24}{statuses.get(s, 0)}")
    print(f"extra deliveries:          {extra} (every message delivered 2-3 times)")
    print(
        f"poison:                    {len(junk)} junk messages, {len(malformed)} malformed envelopes -> "
        f"HTTP {malformed_codes}, {len(poison_docs)} bad documents, 3 bad uploads"
    )
    for n, kill in enumerate(kills, 1):
        print(
            f"SIGKILL {n}:                 after {kill['after_ended']} jobs ended, "
            f"{len(kill['running_at_kill'])} running; restart {kill['restart_seconds']} s; "
            f"all taken over or ended {kill.get('recovery_seconds', 'never')} s after the kill"
        )
    print(
        f"last job ended:            {report['seconds_from_last_kill_to_last_job_ended']} s after the last kill"
    )
    print(
        f"time in queued:            p50 {burst['queued_p50']} s, p99 {burst['queued_p99']} s, max "
        f"{burst['queued_max']} s (lone users' jobs: max {burst['lone_users_queued_max']} s)"
    )
    print(
        f"slots busy:                {burst['busy_fraction']:.0%} of the time while work was queued "
        f"(from job timings: {burst['busy_fraction_from_job_timings']})"
    )
    print(f"longest wait while a slot was free: {burst['longest_wait_with_free_slot']} s")
    print(f"throughput:                {burst['jobs_per_second']} jobs/s over the burst")
    print(f"re-run after a SIGKILL before their commit (one commit each): {len(rerun_after_crash)}")
    print(f"unexpected outcomes:       {wrong or 'none'}")
    print(f"elapsed:                   {report['elapsed_seconds']} s; written to {RESULTS / 'faults.json'}")
    if lost or double or stuck or wrong:
        keep = REPO / ".local" / "faults-logs"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(stack.config.log_dir, keep)
        print(f"logs kept in {keep}")
    print(f"lost={lost} double={double} stuck={stuck}")
    return 0 if lost == double == stuck == 0 and not wrong else 1


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def burst_figures(
    docs: dict[str, JobDoc], planned: dict[str, Planned], samples: list[Sample]
) -> dict[str, Any]:
    """Time in queued (first queued -> first started), the slots' busy fraction while work was
    waiting, and the longest stretch a job sat queued while the service had a free slot."""
    waits: dict[str, tuple[datetime, datetime]] = {}
    for job_id, job in docs.items():
        if planned[job_id].kind in REJECTED or not job.queued_at or not job.started_at:
            continue
        waits[job_id] = (job.queued_at, job.started_at)
    queued = [(b - a).total_seconds() for a, b in waits.values()]
    lone = [(b - a).total_seconds() for j, (a, b) in waits.items() if planned[j].kind == "lone"]
    busy: list[float] = []
    longest = 0.0
    for start, end in waits.values():
        run = 0.0
        previous: Sample | None = None
        for sample in samples:
            if not start <= sample.at <= end:
                previous = None
                continue
            free = sample.up and sample.running < sample.slots
            if free and previous is not None:
                run += (sample.at - previous.at).total_seconds()
                longest = max(longest, run)
            elif not free:
                run = 0.0
            previous = sample if free else None
    for sample in samples:
        if sample.up and any(a <= sample.at <= b for a, b in waits.values()):
            busy.append(sample.running / sample.slots)
    finished = [d.finished_at for j, d in docs.items() if d.finished_at and planned[j].kind not in REJECTED]
    first = min((a for a, _ in waits.values()), default=None)
    span = (max(finished) - first).total_seconds() if finished and first else None
    # The same from the job documents alone (comparable with services that expose no samples):
    # the work time of each final attempt over the slots available during the burst.
    work = sum(
        (t.download or 0) + (t.load or 0) + (t.inference or 0) + (t.write or 0)
        for d in docs.values()
        if (t := d.timings)
    )
    slots = max((s.slots for s in samples if s.up), default=2)
    return {
        "queued_p50": _pct(queued, 0.5),
        "queued_p99": _pct(queued, 0.99),
        "queued_max": _pct(queued, 1.0),
        "lone_users_queued_max": _pct(lone, 1.0),
        "busy_fraction": round(statistics.fmean(busy), 3) if busy else 0.0,
        "busy_fraction_from_job_timings": round(work / (slots * span), 3) if span else None,
        "longest_wait_with_free_slot": round(longest, 2),
        "jobs_per_second": round(len(finished) / span, 2) if span else None,
        "samples": len(samples),
    }


def running_attempts(docs: dict[str, JobDoc]) -> dict[tuple[str, str | None], int]:
    """Every job, or part of a multi-part job, that is running now, with its attempt."""
    found: dict[tuple[str, str | None], int] = {}
    for job_id, job in docs.items():
        if job.status is not JobStatus.RUNNING:
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
