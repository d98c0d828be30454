"""Per-step timings of a ``video`` job for a 10 s clip on the local stack.

    python -m bench.video_latency --runs 3

The clip (slides with burned-in text, Piper speech) is served from 127.0.0.1 and submitted as a
URL. Steps: delivery (created → queued), queueing (queued → prepare claimed), prepare (download,
ffprobe, audio extraction), the ``speech`` and ``screen`` parts (each its own delivery and claim,
in parallel), and total (created → the join). Writes ``bench/results/video_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from core.contract import JobStatus
from infra.client import Client
from infra.localstack.stack import LocalStack, StackConfig
from infra.settings import Settings

RESULTS = Path(__file__).with_name("results")
SPEECH = "This is a short test video. The second slide shows the release date."
SLIDES = ["PROJECT ATLAS 2024", "Release date March 15"]
STEPS = [
    "delivery",
    "queueing",
    "prepare",
    "prepare_ingest",
    "speech_part",
    "screen_part",
    "total",
    "observed",
]


def one_run(client: Client, url: str) -> dict[str, float]:
    t0 = time.time()
    job_id = client.create_job("bench-user", "video", {"url": url})
    job = client.follow(job_id, timeout=300)
    observed = time.time() - t0
    if job.status is not JobStatus.SUCCEEDED or not job.timings or not job.parts or not job.prepared:
        raise RuntimeError(f"video job ended {job.status}: {job.error}")
    t = job.timings
    return {
        "delivery": t.delivery or 0.0,
        "queueing": t.queue or 0.0,
        "prepare": (t.download or 0.0) + (t.load or 0.0) + (t.inference or 0.0),
        "prepare_ingest": float(job.prepared.state.get("timings", {}).get("ingest_seconds", 0.0)),
        "speech_part": job.parts["speech"].seconds or 0.0,
        "screen_part": job.parts["screen"].seconds or 0.0,
        "total": t.total or 0.0,
        "observed": observed,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from devkit.speech import make_video_with_speech
    from devkit.video_server import serve

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "www").mkdir()
        make_video_with_speech(SPEECH, tmp / "www" / "clip.mp4", burned_text=SLIDES, duration=10.0)
        config = StackConfig(state_dir=tmp / "stack", enabled_pipelines=["video"])
        with LocalStack(config) as stack, serve(tmp / "www") as server:
            os.environ.update(stack.env)
            client = Client.from_settings(Settings())
            url = server.url("/clip.mp4")
            first = one_run(client, url)
            runs = [one_run(client, url) for _ in range(args.runs)]

    med = {k: round(statistics.median(r[k] for r in runs), 3) for k in STEPS}
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "clip": "10 s, 640x360 H.264 + AAC, 2 slides, Piper speech; URL on 127.0.0.1",
        "transcription": "faster-whisper tiny.en int8 CPU; OCR: Tesseract 5, frames every 2 s",
        "first_job": {k: round(v, 3) for k, v in first.items()},
        "median": med,
        "runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "video_latency.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'step':<16}{'first job':>10}{'median':>10}   ({len(runs)} runs, seconds)")
    for k in STEPS:
        print(f"{k:<16}{first[k]:>10.3f}{med[k]:>10.3f}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
