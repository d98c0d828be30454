"""The main job, end to end on the local stack: ``make demo``.

Starts the emulator stack, makes sample media locally (real speech synthesized offline with Piper),
submits jobs the ways a client app does (a drop upload, a job document, a bad request), follows
them with progress bars and prints the results and the timings. Stops everything at the end.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from infra.cli import ProgressBar
from infra.client import Client
from infra.contract import JobDoc, JobStatus
from infra.localstack.stack import REPO, LocalStack, StackConfig, StackError
from infra.settings import Settings

SPEECH = {
    "standup.wav": (
        "Good morning everyone. Today we will review the transcription service. "
        "It processed every recording last week without a single crash."
    ),
    "reminder.wav": "Please send the quarterly report to the finance team before Friday afternoon.",
}
VIDEO_TEXT = "This is a short test video. The second slide shows the release date."


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(job_id: str, job: JobDoc, reference: str | None = None) -> None:
    status = job.status.value if job.status else "?"
    print(f"   job {job_id}: {status}")
    if job.error:
        print(f"   error [{job.error.code}]: {job.error.message}")
    if job.outputs and "text" in job.outputs:
        print(f"   transcript: {job.outputs['text']}")
        print(
            f"   language {job.outputs.get('language')}, media {job.outputs.get('duration', 0):.1f} s, "
            f"{len(job.outputs.get('segments') or [])} segments"
        )
        for name, uri in sorted((job.outputs.get("files") or {}).items()):
            print(f"   file {name}: {uri}")
        if reference:
            from tests.support.speech import word_error_rate

            print(f"   word error rate vs the script: {word_error_rate(reference, job.outputs['text']):.3f}")
    if job.timings:
        t = job.timings
        print(
            "   timings (s): "
            + ", ".join(
                f"{k} {v:.3f}"
                for k, v in [
                    ("delivery", t.delivery),
                    ("queue", t.queue),
                    ("download", t.download),
                    ("load", t.load),
                    ("inference", t.inference),
                    ("write", t.write),
                    ("total", t.total),
                ]
                if v is not None
            )
        )


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tests.support.speech import make_video_with_speech, synthesize

    banner("starting the local stack (Pub/Sub, Firestore, Storage emulators, functions, GPU service)")
    stack = LocalStack(StackConfig(state_dir=REPO / ".local"))
    try:
        stack.start()
    except StackError as exc:
        print(f"could not start the local stack: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"   ready in {stack.timings['total']} s: {stack.timings}")
        os.environ.update(stack.env)
        client = Client.from_settings(Settings())
        uid = "demo-user"
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            banner("making sample media with Piper (offline TTS) and ffmpeg")
            files = {name: synthesize(text, tmp / name) for name, text in SPEECH.items()}
            video = make_video_with_speech(
                VIDEO_TEXT, tmp / "slides.mp4", burned_text=["PROJECT ATLAS", "Release date March 15"]
            )
            print("   " + ", ".join(sorted([*files, video.name])))

            banner(
                "1. drop upload: uploads/demo-user/transcribe/standup.wav (the upload alone starts the job)"
            )
            job_id = f"demo-drop-{int(time.time())}"
            client.upload(files["standup.wav"], uid, pipeline="transcribe", metadata={"jobId": job_id})
            show(job_id, client.follow(job_id, ProgressBar(), timeout=300), SPEECH["standup.wav"])

            banner("2. job document: jobs/{id} = {uid, pipeline: transcribe, inputs: {media, language}}")
            uri = client.upload(files["reminder.wav"], uid)
            job_id = client.create_job(
                uid, "transcribe", {"media": uri, "language": "en", "word_timestamps": True}
            )
            show(job_id, client.follow(job_id, ProgressBar(), timeout=300), SPEECH["reminder.wav"])

            banner("3. a video container (mp4) through the same pipeline")
            uri = client.upload(video, uid, content_type="video/mp4")
            job_id = client.create_job(uid, "transcribe", {"media": uri})
            show(job_id, client.follow(job_id, ProgressBar(), timeout=300), VIDEO_TEXT)

            banner("4. a bad request: another user's file -> rejected, with a reason")
            other = client.upload(files["reminder.wav"], "someone-else")
            job_id = client.create_job(uid, "transcribe", {"media": other})
            show(job_id, client.follow(job_id, timeout=60))

        banner(f"{uid}'s jobs")
        for job_id, job in client.list(uid):
            print(f"   {job_id:<34} {job.pipeline:<11} {job.status}")
        ok = all(j.status in (JobStatus.SUCCEEDED, JobStatus.REJECTED) for _, j in client.list(uid))
    finally:
        banner("stopping the local stack")
        stack.stop()
        print(f"   logs: {stack.config.log_dir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
