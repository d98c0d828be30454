"""Video jobs end to end on the local stack: a URL served from 127.0.0.1 (the local stack allows
loopback; production never does), ingest, then transcription and OCR as parallel parts, then join.

The clip is made by the test with ffmpeg: slides with burned-in text, and speech synthesized
offline with Piper; the transcription model is the real Whisper tiny.en.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.contract import JobStatus
from devkit.speech import make_video_with_speech, word_error_rate
from devkit.video_server import VideoServer, serve
from infra.client import Client

pytestmark = pytest.mark.pipelines("video")

SPEECH = "This is a short test video. The second slide shows the release date."
SLIDES = ["PROJECT ATLAS 2024", "Release date March 15"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VideoServer]:
    root = tmp_path_factory.mktemp("www")
    make_video_with_speech(SPEECH, root / "talk.mp4", burned_text=SLIDES, duration=10.0)
    with serve(root) as running:
        yield running


def test_video_url_becomes_transcript_and_screen_text(client: Client, uid: str, server: VideoServer) -> None:
    job_id = client.create_job(uid, "video", {"url": server.url("/talk.mp4")})
    stages: list[str] = []
    job = client.follow(job_id, lambda j: stages.append(j.progress.stage if j.progress else ""), timeout=180)
    assert job.status is JobStatus.SUCCEEDED, job.error
    out = job.outputs or {}
    assert word_error_rate(SPEECH, out["text"]) <= 0.2, out["text"]
    screen = " ".join(entry["text"] for entry in out["ocr"]).upper()
    for word in ("PROJECT", "ATLAS", "2024", "RELEASE", "MARCH"):
        assert word in screen, out["ocr"]
    assert len(out["ocr"]) == 2  # one entry per slide, repeats across frames merged
    assert out["ocr"][0]["time"] < out["ocr"][1]["time"]
    assert SLIDES[0].split()[0].lower() in out["combined_text"].lower()
    assert out["metadata"]["duration"] == pytest.approx(10.0, abs=0.2)
    assert out["metadata"]["source_url"] == server.url("/talk.mp4")
    assert {"source.mp4", "audio.wav", "transcript.srt"} <= set(out["files"])
    assert job.parts and set(job.parts) == {"speech", "screen"}
    assert all(p.status is JobStatus.SUCCEEDED and p.attempt == 1 for p in job.parts.values())
    assert any(s.startswith("parts:") for s in stages)


def test_uploaded_video_drop(client: Client, uid: str, server: VideoServer) -> None:
    job_id = f"v-{uid}"
    client.upload(server.root / "talk.mp4", uid, pipeline="video", metadata={"jobId": job_id})
    job = client.follow(job_id, timeout=180)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.outputs and job.outputs["metadata"]["source_url"] is None
    assert "ATLAS" in " ".join(e["text"] for e in job.outputs["ocr"]).upper()


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///etc/passwd", "invalid_inputs"),  # the schema already refuses other schemes
        ("http://169.254.169.254/computeMetadata/v1/", "blocked_address"),
        ("http://10.0.0.7/video.mp4", "blocked_address"),
        ("http://metadata.google.internal/x", "blocked_host"),
        ("gopher://127.0.0.1/", "invalid_inputs"),
    ],
)
def test_dangerous_urls_are_rejected_before_anything_is_fetched(
    client: Client, uid: str, url: str, code: str
) -> None:
    job = client.follow(client.create_job(uid, "video", {"url": url}), timeout=60)
    assert job.status is JobStatus.REJECTED
    assert job.error and job.error.code == code, job.error


def test_page_without_a_video_fails_with_a_clear_error(client: Client, uid: str, server: VideoServer) -> None:
    job = client.follow(client.create_job(uid, "video", {"url": server.url("/novideo.html")}), timeout=60)
    assert job.status is JobStatus.FAILED
    assert job.error and job.error.code == "unsupported_url" and not job.error.retryable


def test_missing_video_is_not_found(client: Client, uid: str, server: VideoServer) -> None:
    job = client.follow(client.create_job(uid, "video", {"url": server.url("/status/404")}), timeout=60)
    assert job.status is JobStatus.FAILED
    assert job.error and job.error.code == "not_found"
