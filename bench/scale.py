"""Scale-out and cold start, on one local stack: ``make bench`` (or ``python -m bench.scale``).

1. **Scale-out.** 1, 2 and 3 GPU service instances (``devkit/fleet.py``: separate processes behind
   a least-connections front playing Cloud Run's load balancer) serve a burst of ``flaky`` jobs
   whose work is a fixed sleep, so that the 2 cores of this machine do not bound it: the same
   number of jobs per instance each time, so each burst lasts about as long. Reported per
   instance count: throughput (jobs/s, first created to last finished), Firestore reads per job
   and per idle instance-minute (the redriver's polling: each instance idles a while before its
   burst), counted in each instance's Firestore client library; and lost / run twice.
2. **Killed mid-run.** The same burst on 3 instances, created over a few seconds, while one
   instance and the job-created function's process are SIGKILLed (the function restarted, the
   instance replaced as Cloud Run would): lost = jobs that never ended, double = jobs whose work
   completed twice in processes that lived on.
3. **Cold start.** Process start to ready (``/healthz`` 200, models loaded) of a GPU service
   serving one pipeline, per pipeline, on the tiny models here; the part of it spent loading the
   model is the service's own figure.

Writes ``bench/results/scale.json`` with the machine's load average (other work shares it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from google.cloud import firestore

from core.contract import FINAL_STATES, JobDoc, JobStatus, read_job
from devkit.flaky import topology_with_flaky
from devkit.fleet import FleetStack, read_counts, wait_until
from infra.client import Client
from infra.localstack.stack import REPO, StackConfig, free_port
from infra.settings import Settings

RESULTS = REPO / "bench" / "results"
SCALE_GOAL = 2.5
SLOTS = 3  # units in flight per instance
WORK_SECONDS = 2.0  # each job's work: one step of this long
JOBS_PER_INSTANCE = 24
USERS = 12
LEASE_SECONDS = 8
REDRIVE_POLL_SECONDS = 5.0  # the production default: the idle figure is the one a deployment pays
STACK_ENV = {
    "QUOTAS": '{"enabled": false}',  # many jobs per user: this run is about instances, not quotas
    "MAX_CONCURRENT_JOBS": str(SLOTS),
    "LEASE_SECONDS": str(LEASE_SECONDS),
    "REDRIVE_AFTER_SECONDS": "2",
    "REDRIVE_POLL_SECONDS": str(REDRIVE_POLL_SECONDS),
    "STALE_PENDING_SECONDS": "8",
    "STALE_QUEUED_SECONDS": "60",
    "PLUGINS": "devkit.flaky:SPEC",
    "LOG_LEVEL": "WARNING",
}


def _ts(d: datetime | None) -> float:
    assert d is not None
    return d.astimezone(UTC).timestamp()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Burst:
    """Jobs created by ``USERS`` users, then followed to their end by polling Firestore."""

    def __init__(self, client: Client, tag: str, n: int) -> None:
        self.client = client
        self.users = [f"{tag}-{k}" for k in range(USERS)]
        self.n = n
        self.ids: list[str] = []
        self._lock = threading.Lock()

    def create(self, spread_seconds: float = 0.0) -> None:
        """Create the ``n`` jobs, 8 at a time, optionally spread over ``spread_seconds``."""
        inputs = {"steps": 1, "step_seconds": WORK_SECONDS}
        started = time.monotonic()

        def one(k: int) -> None:
            if spread_seconds:
                time.sleep(max(0.0, started + spread_seconds * k / self.n - time.monotonic()))
            job_id = self.client.create_job(self.users[k % len(self.users)], "flaky", inputs)
            with self._lock:
                self.ids.append(job_id)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(self.n)))

    def snapshot(self) -> dict[str, JobDoc]:
        found: dict[str, JobDoc] = {}
        query = self.client.jobs().where(filter=firestore.FieldFilter("uid", "in", self.users))
        for snap in query.stream():
            found[snap.id] = read_job(snap.to_dict() or {})
        return found

    def ended(self) -> int:
        return sum(1 for d in self.snapshot().values() if d.status in FINAL_STATES)

    def wait(self, timeout: float) -> dict[str, JobDoc]:
        deadline = time.monotonic() + timeout
        docs: dict[str, JobDoc] = {}
        while time.monotonic() < deadline:
            docs = self.snapshot()
            if len(docs) >= self.n and all(d.status in FINAL_STATES for d in docs.values()):
                break
            time.sleep(0.5)
        return docs


def runs(state: Path, job_id: str, kind: str) -> list[str]:
    """The process ids that started (``starts``) or completed (``completions``) a job's work."""
    path = state / f"{job_id}.{kind}"
    return path.read_text().split() if path.exists() else []


def outcome(burst: Burst, docs: dict[str, JobDoc], state: Path, killed: set[str]) -> dict[str, Any]:
    ok = [d for d in docs.values() if d.status is JobStatus.SUCCEEDED]
    finished = sorted(_ts(d.finished_at) for d in ok)
    created = min(_ts(d.created_at) for d in docs.values() if d.created_at) if docs else 0.0
    span = finished[-1] - created if finished else 0.0
    # The steady part: from the 10th to the 90th percentile of the finish times.
    lo, hi = (
        finished[len(finished) // 10] if finished else 0,
        finished[(9 * len(finished)) // 10 - 1] if finished else 0,
    )
    completions = {j: runs(state, j, "completions") for j in burst.ids}
    double = [j for j, pids in completions.items() if len([p for p in pids if p not in killed]) > 1]
    return {
        "jobs": burst.n,
        "succeeded": len(ok),
        "statuses": dict(Counter(d.status.value if d.status else "pending" for d in docs.values())),
        "lost": burst.n - sum(1 for d in docs.values() if d.status in FINAL_STATES),
        "double": len(double),
        "rerun_after_a_kill": sum(1 for j, pids in completions.items() if j not in double and len(pids) > 1),
        "work_starts": sum(len(runs(state, j, "starts")) for j in burst.ids),
        "seconds": round(span, 2),
        "jobs_per_second": round(len(ok) / span, 3) if span else 0.0,
        "steady_jobs_per_second": round((0.8 * len(finished)) / (hi - lo), 3) if hi > lo else None,
        "latency_p50": round(statistics.median(_ts(d.finished_at) - _ts(d.created_at) for d in ok), 2)
        if ok
        else None,
    }


def instance_counts(stack: FleetStack) -> Counter[str]:
    return read_counts(stack.counts_dir, stack.instance_pids.values())


def scale_phase(
    stack: FleetStack, client: Client, state: Path, n: int, idle: float, stamp: int
) -> dict[str, Any]:
    cold: list[float] = []
    while len(stack.live_instances()) < n:
        _, seconds = stack.add_instance()
        cold.append(round(seconds, 2))
    time.sleep(1.0)  # the counts are written every half second
    live = stack.live_instances()
    before = instance_counts(stack)
    time.sleep(idle)
    idle_reads = (instance_counts(stack) - before)["reads"]
    burst = Burst(client, f"scale{n}-{stamp}", JOBS_PER_INSTANCE * n)
    before = instance_counts(stack)
    redriven_before = sum((stack.instance_health(i) or {}).get("redriven", 0) for i in live)
    pushes_before = sum(b.served for b in stack.front.backends)
    burst.create()
    docs = burst.wait(300)
    time.sleep(1.0)
    delta = instance_counts(stack) - before
    redriven = sum((stack.instance_health(i) or {}).get("redriven", 0) for i in live) - redriven_before
    result = outcome(burst, docs, state, set())
    result.update(
        {
            "instances": n,
            "slots": n * SLOTS,
            "cold_start_seconds_of_added_instances": cold,
            "idle_seconds": idle,
            "firestore_reads_per_idle_instance_minute": round(idle_reads / (n * idle / 60), 1),
            "firestore_per_job": {k: round(v / burst.n, 2) for k, v in sorted(delta.items())},
            # Units the redrivers took (a claim lost to another instance included), and pushes the
            # front forwarded (duplicates and 429s included): the emulator pushes 2 at a time.
            "redriver_takes": redriven,
            "pushes": sum(b.served for b in stack.front.backends) - pushes_before,
            "load_average": load_average(),
        }
    )
    return result


def kill_phase(stack: FleetStack, client: Client, state: Path, stamp: int) -> dict[str, Any]:
    n = len(stack.live_instances())
    burst = Burst(client, f"kill-{stamp}", JOBS_PER_INSTANCE * n)
    creator = threading.Thread(target=burst.create, kwargs={"spread_seconds": 8.0})
    creator.start()
    # Mid-run: a third of the jobs created and some running on the instance about to die.
    wait_until(lambda: len(burst.ids) >= burst.n // 3, 60)
    victim = max(
        stack.live_instances(),
        key=lambda i: (stack.instance_health(i) or {}).get("capacity", {}).get("running", 0),
    )
    running = (stack.instance_health(victim) or {}).get("capacity", {}).get("running", 0)
    killed = {str(stack.instance_pids[victim])}
    stack.kill_instance(victim)
    function_restart = stack.restart_function("on-job-created")
    stack.spawn_instance()  # Cloud Run replaces the instance
    creator.join()
    docs = burst.wait(300)
    result = outcome(burst, docs, state, killed)
    result.update(
        {
            "instances": n,
            "killed": {"instance": victim, "running_on_it": running, "function": "on-job-created"},
            "function_restart_seconds": round(function_restart, 2),
            "load_average": load_average(),
        }
    )
    return result


# -- cold start -----------------------------------------------------------------------------------


def cold_start_env(tmp: Path) -> dict[str, dict[str, str]]:
    """Each pipeline's GPU service environment, on the tiny models this machine has or builds."""
    from devkit.tiny_diffusers import build_tiny_instruct_pix2pix, build_tiny_wan

    edit = build_tiny_instruct_pix2pix(tmp / "tiny-ip2p")
    wan = build_tiny_wan(tmp / "tiny-wan")
    return {
        "flaky": {"PLUGINS": "devkit.flaky:SPEC"},
        "transcribe": {},
        "inpaint": {},
        "tts": {},
        "video": {},
        "edit": {
            "PIPELINES__EDIT__MODEL_DIR": str(edit),
            "PIPELINES__EDIT__DTYPE": "float32",
            "PIPELINES__EDIT__DEVICE": "cpu",
        },
        "t2v": {
            "PIPELINES__T2V__MODEL_DIR": str(wan),
            "PIPELINES__T2V__DTYPE": "float32",
            "PIPELINES__T2V__DEVICE": "cpu",
        },
    }


def cold_start(stack: FleetStack, pipeline: str, extra: dict[str, str], log_dir: Path) -> dict[str, Any]:
    """Start a GPU service serving ``pipeline`` alone; seconds until ``/healthz`` answers 200."""
    port = free_port()
    env = {
        **os.environ,
        **stack.env,
        "TOPOLOGY_FILE": str(stack.config.state_dir / "topology.yaml"),
        "ENABLED_PIPELINES": pipeline,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "REDRIVE": "false",
        "LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        **extra,
    }
    log_path = log_dir / f"cold-{pipeline}.log"
    started = time.perf_counter()
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpu_service"], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    body: dict[str, Any] = {}
    try:
        while time.perf_counter() - started < 180 and proc.poll() is None:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                body = resp.json()
                if resp.status_code == 200 or body.get("status") == "failed":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        seconds = time.perf_counter() - started
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    loaded = body.get("loaded") or {}
    return {
        "ready_seconds": round(seconds, 2),
        "model_load_seconds": loaded.get(pipeline),
        "status": body.get("status", "no answer"),
        "error": body.get("error"),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds each fleet idles before its burst")
    parser.add_argument("--no-kill", action="store_true")
    parser.add_argument("--no-cold", action="store_true")
    parser.add_argument("--pipelines", default="flaky,transcribe,inpaint,tts,video,edit,t2v")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stamp = int(time.time())
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "load_average_at_start": load_average(),
        "work": f"flaky: one step of {WORK_SECONDS} s sleep per job; {SLOTS} slots per instance; "
        f"{JOBS_PER_INSTANCE} jobs per instance per burst by {USERS} users",
        "redrive_poll_seconds": REDRIVE_POLL_SECONDS,
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        state = tmp / "flaky"
        env = {**STACK_ENV, "PIPELINES__FLAKY__STATE_DIR": str(state)}
        config = StackConfig(
            state_dir=tmp / "stack",
            enabled_pipelines=["flaky"],
            env=env,
            start_edge=False,
            schedule_interval_seconds=2.0,
            memory_limits=False,
        )
        with FleetStack(config, topology_with_flaky(), instances=1) as stack:
            os.environ.update({**stack.env, **env})
            client = Client.from_settings(Settings())
            report["stack_start_seconds"] = stack.timings.get("total")
            warm = Burst(client, f"warm-{stamp}", SLOTS)  # the functions' and the service's first jobs
            warm.create()
            warm.wait(120)
            phases = [
                scale_phase(stack, client, state, n, args.idle, stamp) for n in range(1, args.instances + 1)
            ]
            report["scale_out"] = {f"{p['instances']}_instances": p for p in phases}
            base, steady = phases[0]["jobs_per_second"] or 1.0, phases[0]["steady_jobs_per_second"] or 1.0
            report["throughput_ratio"] = {
                f"{p['instances']}_instances": round(p["jobs_per_second"] / base, 2) for p in phases
            }
            report["steady_throughput_ratio"] = {
                f"{p['instances']}_instances": round((p["steady_jobs_per_second"] or 0) / steady, 2)
                for p in phases
            }
            if not args.no_kill:
                report["killed_mid_run"] = kill_phase(stack, client, state, stamp)
            if not args.no_cold:
                models = tmp / "models"
                envs = cold_start_env(models)
                report["cold_start"] = {
                    p: cold_start(stack, p, envs.get(p, {}), config.log_dir)
                    for p in args.pipelines.split(",")
                }
    report["load_average_at_end"] = load_average()
    report["bench_seconds"] = round(time.perf_counter() - t0, 1)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "scale.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average at start {report['load_average_at_start']}, at end {report['load_average_at_end']}")
    for p in report["scale_out"].values():
        print(
            f"{p['instances']} instance(s), {p['slots']} slots: {p['jobs']} jobs of {WORK_SECONDS} s sleep in "
            f"{p['seconds']} s = {p['jobs_per_second']} jobs/s (steady {p['steady_jobs_per_second']}); "
            f"Firestore per job {p['firestore_per_job']}; reads per idle instance-minute "
            f"{p['firestore_reads_per_idle_instance_minute']}; pushes {p['pushes']}, redriver takes "
            f"{p['redriver_takes']}; lost {p['lost']}, double {p['double']}"
        )
    key = f"{args.instances}_instances"
    ratio, steady_ratio = (
        report["throughput_ratio"].get(key, 0),
        report["steady_throughput_ratio"].get(key, 0),
    )
    met = min(ratio, steady_ratio) >= SCALE_GOAL
    print(
        f"throughput with {args.instances} instances: {ratio}x one instance over the whole burst, "
        f"{steady_ratio}x steady (goal >= {SCALE_GOAL}x): {'met' if met else 'NOT met'}"
    )
    idle = [p["firestore_reads_per_idle_instance_minute"] for p in report["scale_out"].values()]
    per_job = [p["firestore_per_job"].get("reads", 0) for p in report["scale_out"].values()]
    print(f"Firestore reads per idle instance-minute {idle}, per job {per_job} (goal: flat in instances)")
    if "killed_mid_run" in report:
        k = report["killed_mid_run"]
        print(
            f"killed mid-run ({k['killed']['instance']} with {k['killed']['running_on_it']} running, and the "
            f"job-created function): {k['jobs']} jobs, {k['succeeded']} succeeded, {k['jobs_per_second']} jobs/s; "
            f"re-run after the kill {k['rerun_after_a_kill']}; lost={k['lost']} double={k['double']}"
        )
    for name, c in report.get("cold_start", {}).items():
        print(
            f"cold start {name}: ready in {c['ready_seconds']} s (model load {c['model_load_seconds']} s), {c['status']}"
        )
    print(f"bench took {report['bench_seconds']} s; written to {out}")
    lost = sum(p["lost"] + p["double"] for p in report["scale_out"].values())
    if "killed_mid_run" in report:
        lost += report["killed_mid_run"]["lost"] + report["killed_mid_run"]["double"]
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
