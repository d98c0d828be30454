"""Upload → ``succeeded`` latency for a 10 s speech clip on the local stack, split by stage.

    make bench            # or: python -m bench.e2e_latency --runs 5

Stages (all clocks are this machine's; the emulators stamp server times with it too):

* upload: the client's upload call (fake-gcs-server);
* event delivery: upload done → job document created (Storage notification → Pub/Sub push →
  storage function → Firestore create);
* validation: created → queued (Firestore trigger → job function: checks, publish);
* queueing: queued → claimed by the GPU service (Pub/Sub push → claim transaction);
* download, model load, inference, write: measured inside the GPU service;
* total: upload start → the client's listener sees ``succeeded``.

Prints a table and writes ``bench/results/e2e_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from core.contract import JobDoc, JobStatus
from infra.client import Client
from infra.localstack.stack import LocalStack, StackConfig
from infra.settings import Settings

RESULTS = Path(__file__).with_name("results")
TEXT = (
    "Good morning everyone and welcome to the weekly engineering review. "
    "Today we will look at the transcription service and the plan for the next release."
)
STAGES = [
    "upload",
    "event_delivery",
    "validation",
    "queueing",
    "download",
    "load",
    "inference",
    "write",
    "total",
]


def ten_second_clip(tmp: Path) -> Path:
    from devkit.speech import synthesize

    speech = synthesize(TEXT, tmp / "speech.wav")
    clip = tmp / "clip10.wav"
    # Pad (or cut) to exactly 10.0 s, 16 kHz mono, as a phone recording would be.
    subprocess.run(
        ["sox", str(speech), "-r", "16000", "-c", "1", str(clip), "pad", "0", "10", "trim", "0", "10"],
        check=True,
    )
    return clip


def one_run(client: Client, clip: Path, n: int) -> dict[str, float]:
    job_id = f"bench-{int(time.time() * 1000)}-{n}"
    seen: dict[str, float] = {}

    def on_update(job: JobDoc) -> None:
        if job.status and job.status.value not in seen:
            seen[job.status.value] = time.time()

    t0 = time.time()
    client.upload(clip, "bench-user", pipeline="transcribe", metadata={"jobId": job_id})
    t_uploaded = time.time()
    job = client.follow(job_id, on_update, timeout=300)
    t_seen = seen.get("succeeded", time.time())
    if job.status is not JobStatus.SUCCEEDED:
        raise RuntimeError(f"run {n}: job ended {job.status}: {job.error}")
    assert job.created_at and job.queued_at and job.timings

    def ts(d: datetime | None) -> float:
        assert d is not None
        return d.astimezone(UTC).timestamp()

    timings = job.timings
    claimed = ts(job.queued_at) + (timings.queue or 0.0)
    return {
        "upload": t_uploaded - t0,
        "event_delivery": ts(job.created_at) - t_uploaded,
        "validation": ts(job.queued_at) - ts(job.created_at),
        "queueing": claimed - ts(job.queued_at),
        "download": timings.download or 0.0,
        "load": timings.load or 0.0,
        "inference": timings.inference or 0.0,
        "write": timings.write or 0.0,
        "total": t_seen - t0,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as tmp_name:
        clip = ten_second_clip(Path(tmp_name))
        t_start = time.perf_counter()
        with LocalStack(StackConfig(state_dir=Path(tmp_name) / "stack")) as stack:
            stack_start = time.perf_counter() - t_start
            os.environ.update(stack.env)
            client = Client.from_settings(Settings())
            health = httpx.get(f"{stack.env['GPU_SERVICE_URL']}/healthz").json()
            first = one_run(client, clip, 0)  # the first job after start-up: warms caches
            runs = [one_run(client, clip, n) for n in range(1, args.runs + 1)]

    med = {k: statistics.median(r[k] for r in runs) for k in STAGES}
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "clip_seconds": 10.0,
        "model": "faster-whisper tiny.en (CTranslate2, int8, CPU), beam 5, VAD",
        "stack_start_seconds": round(stack_start, 2),
        "stack_component_ready_seconds": stack.timings,
        "model_preload_seconds": health.get("loaded"),
        "first_job": {k: round(v, 3) for k, v in first.items()},
        "median": {k: round(v, 3) for k, v in med.items()},
        "runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "e2e_latency.json"
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"local stack start: {stack_start:.2f} s; model preload: {health.get('loaded')}")
    print(f"{'stage':<16}{'first job':>10}{'median':>10}{'min':>10}{'max':>10}   ({len(runs)} runs, seconds)")
    for k in STAGES:
        values = [r[k] for r in runs]
        print(f"{k:<16}{first[k]:>10.3f}{med[k]:>10.3f}{min(values):>10.3f}{max(values):>10.3f}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
