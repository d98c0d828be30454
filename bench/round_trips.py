"""Round trips per job, per pipeline, and the CPU one job costs each process of the stack.

    make bench          # or: python -m bench.round_trips

1. **Round trips per pipeline**: a few jobs of each pipeline the local stack serves (a tiny
   inpaint job with two inputs and one output, a short speech clip to transcribe, a sentence to
   speak), counted from the components' logs (``infra/roundtrips.py``): Firestore, Storage and
   Pub/Sub calls from created to succeeded, lease renewals and progress writes (``beats``) apart.
2. **CPU per job, per process**: a burst of tiny inpaint jobs (``bench/throughput.py``'s), with
   each process's CPU time read from ``/proc`` before and after (``bench/proc_cpu.py``): the
   project's processes (the functions, the GPU service, the API) apart from the emulators and
   from this client. CPU seconds are counted, not wall time, so the figure holds on a busy machine.

Writes ``bench/results/round_trips.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import proc_cpu
from bench.throughput import burst
from core.contract import JobStatus
from infra import roundtrips
from infra.client import Client
from infra.localstack.stack import LocalStack, StackConfig
from infra.settings import Settings

RESULTS = Path(__file__).with_name("results")
#: the goals: what the work needs (issue 24), for the tiny inpaint job
GOALS = {"firestore": 4, "storage": 5, "pubsub": 1}
SERVICES = ("firestore", "storage", "pubsub", "beats")


def _inputs(client: Client, uid: str, tmp: Path) -> dict[str, dict[str, Any]]:
    """One job's inputs per pipeline: what each one's round trips are counted on."""
    from PIL import Image, ImageDraw

    from devkit.speech import speech_clips

    image, mask = tmp / "tiny.png", tmp / "tiny-mask.png"
    Image.new("RGB", (32, 32), (90, 140, 200)).save(image)
    m = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(m).rectangle((10, 10, 20, 20), fill=255)
    m.save(mask)
    clip = speech_clips(tmp)[0]
    return {
        "inpaint": {"image": client.upload(image, uid), "mask": client.upload(mask, uid)},
        "transcribe": {"media": client.upload(clip, uid)},
        "tts": {"text": "Fewer calls, the same work.", "format": "mp3"},
    }


def _counts(stack: LocalStack, ids: set[str]) -> dict[str, Counter[str]]:
    deadline = time.monotonic() + 30
    while True:
        lines = [
            line
            for name in ("on-object-finalized", "on-job-created", "gpu_service")
            for line in stack.log_path(name).read_text(errors="replace").splitlines()
        ]
        ended = {
            job_id
            for job_id in ids
            for line in lines
            if f"job {job_id} round trips" in line and "(succeeded)" in line
        }
        if ended == ids or time.monotonic() > deadline:  # the worker logs its count after the commit
            return roundtrips.from_logs(lines, ids)
        time.sleep(0.2)


def per_pipeline(client: Client, stack: LocalStack, uid: str, tmp: Path, jobs: int) -> dict[str, Any]:
    """Mean round trips per job of each pipeline (after one warm-up job each, not counted)."""
    out: dict[str, Any] = {}
    for pipeline, inputs in _inputs(client, uid, tmp).items():
        client.follow(client.create_job(uid, pipeline, inputs), timeout=300)  # warm-up
        ids = []
        for _ in range(jobs):
            job_id = client.create_job(uid, pipeline, inputs)
            job = client.follow(job_id, timeout=300)
            assert job.status is JobStatus.SUCCEEDED, job.error
            ids.append(job_id)
        per_job = _counts(stack, set(ids))
        row = {k: round(statistics.fmean(c[k] for c in per_job.values()), 2) for k in SERVICES}
        row["firestore_without_beats"] = round(row["firestore"] - row["beats"], 2)
        out[pipeline] = row
    return out


def _profiles(folder: Path) -> dict[int, dict[str, Any]]:
    return {(d := json.loads(path.read_text()))["pid"]: d for path in folder.glob("*.json")}


#: frames every request passes through (threads, servers, the retry wrapper): not where to cut
_PLUMBING = ("3.11/threading.py", "3.11/concurrent/", "flask/", "gunicorn/", "functions_framework/",
             "anyio/", "uvicorn/", "starlette/", "google/api_core/", "<frozen", "3.11/asyncio/")  # fmt: skip


def _since(after: dict[str, float], before: dict[str, float], jobs: int, top: int) -> dict[str, float]:
    """Milliseconds per job between two profiles of one process (the profiles hold their top
    entries only: an entry missing before counts from zero), the plumbing's frames left out."""
    ms = {k: 1000 * (v - before.get(k, 0.0)) / jobs for k, v in after.items() if not k.startswith(_PLUMBING)}
    return {k: round(v, 2) for k, v in sorted(ms.items(), key=lambda kv: -kv[1])[:top] if v > 0}


def _parent(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[1])


def profile(client: Client, stack: LocalStack, jobs: int, stamp: int, tmp: Path) -> int:
    """The burst alone, after one job of each pipeline (the models loaded, the clients
    connected), then where each project process spent its CPU in the burst (ms per job)."""
    for pipeline, inputs in _inputs(client, f"prof-warm-{stamp}", tmp).items():
        client.follow(client.create_job(f"prof-warm-{stamp}", pipeline, inputs), timeout=300)
    time.sleep(3)  # the samplers write every 2 s
    before = _profiles(tmp / "profile")
    burst(client, stack, jobs, f"prof-{stamp}", tmp)
    time.sleep(3)
    names = {stack.pid(name): name for name in [*stack.topology.functions, *proc_cpu.PROJECT]}
    report: dict[str, Any] = {}
    for pid, data in sorted(_profiles(tmp / "profile").items()):
        old = before.get(pid, {})
        cpu = data["cpu_seconds_sampled"] - old.get("cpu_seconds_sampled", 0.0)
        if cpu < 0.05:
            continue
        name = names.get(pid) or names.get(_parent(pid)) or str(pid)  # a server's worker process
        report[name] = {
            "cpu_ms_per_job_sampled": round(1000 * cpu / jobs, 1),
            "inclusive_ms_per_job": _since(
                data["inclusive_seconds"], old.get("inclusive_seconds", {}), jobs, 20
            ),
            "self_ms_per_job": _since(data["self_seconds"], old.get("self_seconds", {}), jobs, 12),
        }
        print(
            f"{name}: {report[name]['cpu_ms_per_job_sampled']} ms of CPU per job sampled; inclusive, ms per job:"
        )
        for where, ms in _since(
            data["inclusive_seconds"], old.get("inclusive_seconds", {}), jobs, 60
        ).items():
            print(f"    {ms:7.2f}  {where}")
    out = RESULTS / "round_trips_profile.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3, help="jobs per pipeline for the round trips")
    parser.add_argument("--burst", type=int, default=200, help="tiny inpaint jobs in the CPU burst")
    parser.add_argument("--out", type=Path, default=RESULTS / "round_trips.json")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only the burst, with each project process sampling its CPU by function (infra/sampling.py)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stamp = int(time.time())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = StackConfig(
            state_dir=tmp / "stack",
            enabled_pipelines=["inpaint", "transcribe", "tts"],
            # As bench/throughput.py runs its burst: six units in flight, two on the model.
            env={
                "LOG_LEVEL": "INFO",
                "MAX_CONCURRENT_JOBS": "6",
                "MODEL_CONCURRENCY": "2",
                **({"PROFILE_DIR": str(tmp / "profile")} if args.profile else {}),
            },
        )
        with LocalStack(config) as stack:
            os.environ.update(stack.env)
            client = Client.from_settings(Settings())
            if args.profile:
                return profile(client, stack, args.burst, stamp, tmp)
            pipelines = per_pipeline(client, stack, f"trips-{stamp}", tmp, args.jobs)
            before = proc_cpu.sample(stack)
            small = burst(client, stack, args.burst, f"cpu-{stamp}", tmp)
            cpu = proc_cpu.per_job(before, proc_cpu.sample(stack), args.burst, list(stack.topology.functions))
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs, shared; no GPU",
        "round_trips_per_job": pipelines,
        "goal_inpaint": GOALS,
        "burst": {
            "jobs": small["jobs"],
            "succeeded": small["succeeded"],
            "lost": small["lost"],
            "run_twice": small["run_twice"],
            "jobs_per_second": small["jobs_per_second"],
            "round_trips_per_job": small["round_trips_per_job"],
            "cpu": cpu,
        },
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for pipeline, row in pipelines.items():
        print(
            f"round trips per {pipeline} job: Firestore {row['firestore']} (of which lease and progress "
            f"{row['beats']}), Storage {row['storage']}, Pub/Sub {row['pubsub']}"
        )
    inpaint = pipelines["inpaint"]
    met = (
        inpaint["firestore_without_beats"] <= GOALS["firestore"]
        and inpaint["storage"] <= GOALS["storage"]
        and inpaint["pubsub"] <= GOALS["pubsub"]
    )
    print(
        f"goal: a tiny inpaint job costs at most {GOALS} (lease and progress apart): {'met' if met else 'NOT met'}"
    )
    print(
        f"burst of {small['jobs']} tiny inpaint jobs: {small['jobs_per_second']} jobs/s, lost {small['lost']}, "
        f"run twice {small['run_twice']}; round trips per job {small['round_trips_per_job']}"
    )
    print(
        f"CPU per job from /proc: the project's processes {cpu['project_ms_per_job']} ms, the emulators and "
        f"stand-ins {cpu['emulators_ms_per_job']} ms, this client {cpu['client_ms_per_job']} ms"
    )
    print(f"  per process (ms per job): {cpu['per_process_ms_per_job']}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
