"""The main job, end to end on the local stack: ``make demo``.

Starts the emulator stack, makes sample media locally (real speech synthesized offline with Piper),
submits jobs the ways a client app does (a drop upload, a job document, a bad request), follows
them with progress bars and prints the results and the timings; then drives the web client
headless in chromium (screenshot in ``.local/demo/web.png``) and calls the HTTP API with a user's
token. Stops everything at the end.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from cli import ProgressBar
from core.contract import JobDoc, JobStatus
from infra.client import Client
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
        duration = job.outputs.get("duration") or (job.outputs.get("metadata") or {}).get("duration") or 0.0
        language = job.outputs.get("language")
        print(
            (f"   language {language}, " if language else "   ")
            + f"media {duration:.1f} s, {len(job.outputs.get('segments') or [])} segments"
        )
        for name, uri in sorted((job.outputs.get("files") or {}).items()):
            print(f"   file {name}: {uri}")
        if reference:
            from devkit.speech import word_error_rate

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


DIALOGUE = (
    "Speaker 1: Good morning! Did the 3 reports reach the finance team before 9:30?\n"
    "Speaker 2: They did. The last one arrived at 9:15, and Dr. Patel has already read it.\n"
    "Speaker 1: Wonderful. Then we can close the quarter on Friday."
)


def tts_job(client: Client, uid: str, out_dir: Path) -> None:
    """Speak a script with two voices, then print where the audio is: in Storage and locally."""
    print("   " + DIALOGUE.replace("\n", "\n   "))
    job_id = client.create_job(
        uid,
        "tts",
        {"text": DIALOGUE, "voices": {"Speaker 1": "joe", "Speaker 2": "joe-calm"}, "format": "mp3"},
    )
    job = client.follow(job_id, ProgressBar(), timeout=300)
    show(job_id, job)
    if job.status is JobStatus.SUCCEEDED and job.outputs:
        out = job.outputs
        local = client.download(out["audio"], out_dir / "dialogue.mp3")
        print(
            f"   {out['duration_seconds']:.1f} s of {out['format']} at {out['sample_rate']} Hz in {out['chunks']} "
            f"chunks, voices {', '.join(out['voices'])}; loudness {out['loudness_lufs']} LUFS, "
            f"peak {out['peak_dbfs']} dBFS"
        )
        print(f"   audio: {out['audio']}\n   local copy: {local}")


def web_demo(stack: LocalStack, image: Path, mask: Path, screenshot: Path) -> Path | None:
    """Drive the web client once, as a user would, and save a screenshot of the finished page."""
    from devkit.firebase_auth import new_email
    from devkit.webapp import WebApp, browser

    print(f"   web client: {stack.env['WEB_URL']}")
    with browser() as chromium:
        app = WebApp(chromium.new_page(viewport={"width": 1000, "height": 1100}), stack.env["WEB_URL"]).open()
        started = time.perf_counter()
        uid = app.sign_up(new_email())
        job_id = app.run("inpaint", image, mask=mask)
        status = app.wait_final(timeout=120)
        if status == "succeeded":
            app.wait_result_image()
        seconds = time.perf_counter() - started
        print(f"   user {uid}, job {job_id}: {status} ({' -> '.join(app.statuses_seen)}) in {seconds:.2f} s")
        app.page.screenshot(path=str(screenshot), full_page=True)
    return screenshot if status == "succeeded" else None


def api_demo(stack: LocalStack, wav: Path) -> None:
    """What a script without the Firebase SDK does: a token, an upload, a create, the events."""
    import httpx

    from devkit.firebase_auth import sign_up

    user = sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])
    with httpx.Client(base_url=stack.env["API_URL"], headers=user.headers, timeout=120) as api:
        slot = api.post(
            "/v1/uploads", json={"name": wav.name, "contentType": "audio/wav", "size": wav.stat().st_size}
        ).json()
        httpx.put(slot["url"], headers=slot["headers"], content=wav.read_bytes()).raise_for_status()
        job = api.post(
            "/v1/jobs?wait=60", json={"pipeline": "transcribe", "inputs": {"media": slot["uri"]}}
        ).json()
        print(f"   POST /v1/jobs?wait=60 -> {job['status']}: {job.get('outputs', {}).get('text', '')}")
        files = api.get(f"/v1/jobs/{job['id']}/results").json()["files"]
        print(f"   GET /v1/jobs/{{id}}/results -> {', '.join(f['name'] for f in files)} (signed URLs)")
        bad = api.post("/v1/jobs", json={"pipeline": "inpaint", "inputs": {}})
        print(f"   a bad request -> {bad.status_code} {bad.json()['code']}: {bad.json()['message']}")


def automaton_demo(client: Client, uid: str, dest: Path) -> None:
    inputs = {"dimensions": 2, "rule": "B3/S23", "seed": 2026, "width": 320, "height": 240, "frames": 240}
    job_id = client.create_job(uid, "automaton", inputs)
    job = client.follow(job_id, ProgressBar(), timeout=300)
    show(job_id, job)
    if job.status is JobStatus.SUCCEEDED and job.outputs:
        client.download(job.outputs["video"], dest)
        print(
            f"   {job.outputs['frames']} frames of Life at {job.outputs['fps']} fps: {job.outputs['video']}"
        )
        print(f"   video: {dest}")


def t2v_demo(client: Client, uid: str, out_dir: Path) -> None:
    """A text-to-video job on the tiny random Wan; the MP4 and poster are copied to ``out_dir``."""
    job_id = client.create_job(
        uid,
        "t2v",
        {"prompt": "a red cat on a wooden bench", "num_frames": 17, "fps": 8, "width": 96, "height": 64,
         "steps": 4, "seed": 1},
    )  # fmt: skip
    job = client.follow(job_id, ProgressBar(), timeout=300)
    show(job_id, job)
    if job.status is JobStatus.SUCCEEDED and job.outputs:
        video = client.download(job.outputs["video"], out_dir / "t2v.mp4")
        poster = client.download(job.outputs["poster"], out_dir / "t2v-poster.png")
        print(
            f"   {job.outputs['num_frames']} frames {job.outputs['width']}x{job.outputs['height']} at "
            f"{job.outputs['fps']} fps, {job.outputs['backend']}, memory strategy {job.outputs['memory_strategy']}"
        )
        print(
            f"   video in Storage: {job.outputs['video']}\n   video here: {video}\n   poster here: {poster}"
        )


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from devkit.speech import make_video_with_speech, synthesize

    out_dir = REPO / ".local" / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    banner(
        "building a tiny random-weight InstructPix2Pix for the edit pipeline (no weights can be downloaded)"
    )
    from devkit.tiny_diffusers import build_tiny_instruct_pix2pix

    edit_model = build_tiny_instruct_pix2pix(REPO / ".local" / "models" / "tiny-ip2p")
    banner("building a tiny random-weight Wan 2.1 for the t2v pipeline (no weights can be downloaded)")
    from devkit.tiny_diffusers import build_tiny_wan

    wan_model = build_tiny_wan(REPO / ".local" / "models" / "tiny-wan")
    banner(
        "starting the local stack (Pub/Sub, Firestore, Storage and Auth emulators, functions, GPU service, "
        "API, web client)"
    )
    stack = LocalStack(
        StackConfig(
            state_dir=REPO / ".local",
            # automaton: the example plugin (plugins/cellular-automata), enabled by name alone.
            enabled_pipelines=["transcribe", "inpaint", "edit", "video", "t2v", "tts", "automaton"],
            env={
                "PIPELINES__EDIT__MODEL_DIR": str(edit_model),
                "PIPELINES__EDIT__DTYPE": "float32",
                "PIPELINES__EDIT__DEVICE": "cpu",
                "PIPELINES__T2V__MODEL_DIR": str(wan_model),
                "PIPELINES__T2V__DTYPE": "float32",
                "PIPELINES__T2V__DEVICE": "cpu",
            },
        )
    )
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
                VIDEO_TEXT,
                tmp / "slides.mp4",
                burned_text=["PROJECT ATLAS", "Release date March 15"],
                duration=10.0,
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

            banner("3. a video container (mp4) through the transcription pipeline")
            uri = client.upload(video, uid, content_type="video/mp4")
            job_id = client.create_job(uid, "transcribe", {"media": uri})
            show(job_id, client.follow(job_id, ProgressBar(), timeout=300), VIDEO_TEXT)

            banner("4. inpainting (OpenCV backend, no GPU): remove a drawn mark from a picture")
            from PIL import Image

            from devkit.sample_images import side_by_side, write_sample

            image_path, mask_path = write_sample(tmp / "img")
            inputs = {
                "image": client.upload(image_path, uid),
                "mask": client.upload(mask_path, uid),
                "seed": 1,
            }
            job_id = client.create_job(uid, "inpaint", inputs)
            job = client.follow(job_id, ProgressBar(), timeout=300)
            show(job_id, job)
            if job.status is JobStatus.SUCCEEDED and job.outputs:
                result = client.download(job.outputs["image"], tmp / "img" / "result.png")
                with (
                    Image.open(image_path) as before,
                    Image.open(mask_path) as mask,
                    Image.open(result) as after,
                ):
                    picture = side_by_side(before, after, out_dir / "before_after.png", mask=mask)
                print(f"   result {job.outputs['image']}\n   before/after picture: {picture}")

            banner(
                "5. instruction editing through the production loader (tiny random weights: the picture is noise)"
            )
            job_id = client.create_job(
                uid,
                "edit",
                {"image": client.upload(image_path, uid), "instruction": "make it sunset", "steps": 4},
            )
            job = client.follow(job_id, ProgressBar(), timeout=300)
            show(job_id, job)
            if job.outputs:
                print(
                    f"   memory strategy: {job.outputs.get('memory_strategy')}, result {job.outputs.get('image')}"
                )

            banner(
                "5b. text to video: Wan 2.1 through the production loader, on TINY RANDOM WEIGHTS "
                "(the video is noise: the path is real)"
            )
            t2v_demo(client, uid, out_dir)

            banner("6. a video URL: download, then transcription and OCR as parallel parts, then the join")
            from devkit.video_server import serve

            www = tmp / "www"
            www.mkdir()
            video.rename(www / "slides.mp4")
            with serve(www) as server:
                job_id = client.create_job(uid, "video", {"url": server.url("/slides.mp4")})
                job = client.follow(job_id, ProgressBar(), timeout=300)
            show(job_id, job, VIDEO_TEXT)
            if job.outputs:
                for entry in job.outputs["ocr"]:
                    print(f"   on screen {entry['time']:>4.1f}-{entry['until']:>4.1f} s: {entry['text']}")
                for name, part in sorted((job.parts or {}).items()):
                    print(f"   part {name}: {part.status}, {part.seconds} s")

            banner("7. text to speech (Piper): a two-speaker script, loudness-normalised, as mp3")
            tts_job(client, uid, out_dir)

            banner("8. a bad request: another user's file -> rejected, with a reason")
            other = client.upload(files["reminder.wav"], "someone-else")
            job_id = client.create_job(uid, "transcribe", {"media": other})
            show(job_id, client.follow(job_id, timeout=60))

            banner(
                "9. the web app, headless in chromium: sign up, upload, create with the SDK, watch, result"
            )
            screenshot = web_demo(stack, image_path, mask_path, out_dir / "web.png")

            banner("10. a server with the user's ID token, over HTTP: create and wait, then the event stream")
            api_demo(stack, files["reminder.wav"])

            banner("11. a plugin: the cellular-automaton pipeline of plugins/cellular-automata, as an MP4")
            automaton_demo(client, uid, out_dir / "automaton.mp4")

        banner(f"{uid}'s jobs")
        for job_id, job in client.list(uid):
            print(f"   {job_id:<34} {job.pipeline:<11} {job.status}")
        ok = all(j.status in (JobStatus.SUCCEEDED, JobStatus.REJECTED) for _, j in client.list(uid))
        ok = ok and screenshot is not None
        if screenshot:
            print(f"\n   web client screenshot: {screenshot}")
    finally:
        banner("stopping the local stack")
        stack.stop()
        print(f"   logs: {stack.config.log_dir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
