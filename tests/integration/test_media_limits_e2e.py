"""Media is read as what it claims to be, and what a job would cost is capped, end to end.

* An upload named ``*.m3u8`` sent as ``audio/mpeg`` whose body is an HLS playlist naming a local
  recording: it used to end ``succeeded`` with the transcript of that local file. Now a playlist
  small enough for the functions to read whole is ``rejected``; one padded past the bytes the
  functions read reaches the worker, which names its copy after the content type (``.mp3``) and
  opens it as audio only: ``failed``. Neither says a word of the local recording.
* Cost caps are checked from the object's header before anything is queued: hours of silence in a
  small FLAC (``duration_exceeded``), a video over the duration cap (``too_long``), an image over
  the decoded-pixel cap (``image_too_large``), a text over ``max_chars`` (``text_too_long``); and
  again by the worker before it decodes anything, for a file whose head and tail do not tell (an
  MP4 whose index is larger than the tail the functions read: ``failed``, ``too_long``, no part).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from core.contract import JobDoc, JobStatus
from core.errors import MAX_MESSAGE_CHARS
from devkit.media_files import long_video, playlist, silent_flac, to_mp3
from devkit.speech import synthesize
from infra.client import Client

pytestmark = pytest.mark.pipelines("transcribe", "video", "edit", "tts")

SECRET = "The vault code is seven seven four, and the backup key is in the blue drawer."
#: the functions read this many bytes of a media object's head (FileInput.header_bytes)
HEAD_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def secret_mp3(media_dir: Path) -> Path:
    """A recording on the machine the service runs on, which no job may read."""
    return to_mp3(synthesize(SECRET, media_dir / "secret.wav"), media_dir / "secret.mp3")


def _ended(job: JobDoc, status: JobStatus, code: str) -> None:
    assert job.status is status, (job.status, job.error, job.outputs)
    assert job.error is not None and job.error.code == code, job.error
    assert len(job.error.message) <= MAX_MESSAGE_CHARS and not job.error.retryable
    assert job.outputs is None


@pytest.mark.parametrize(
    ("pad_to", "status"),
    [(0, JobStatus.REJECTED), (HEAD_BYTES + 16 * 1024, JobStatus.FAILED)],
    ids=["read-whole-by-the-functions", "past-the-head-so-the-worker-decides"],
)
def test_a_playlist_named_m3u8_sent_as_audio_mpeg_never_reads_a_local_file(
    client: Client, uid: str, media_dir: Path, secret_mp3: Path, pad_to: int, status: JobStatus
) -> None:
    body = playlist(secret_mp3, media_dir / f"talk-{pad_to}.m3u8", pad_to=pad_to)
    uri = client.upload(body, uid, name="talk.m3u8", content_type="audio/mpeg")
    job = client.follow(client.create_job(uid, "transcribe", {"media": uri}), timeout=180)
    _ended(job, status, "unsupported_media")
    assert "vault" not in job.error.message.lower() if job.error else True
    assert str(media_dir) not in (job.error.message if job.error else "")
    if status is JobStatus.FAILED:
        assert job.attempt == 1  # the worker refused it once, for good: no retries


def test_hours_of_silence_in_a_small_flac_are_rejected_before_queueing(
    client: Client, uid: str, media_dir: Path
) -> None:
    flac = silent_flac(media_dir / "quiet.flac", 4.5 * 3600, frame_size=16384)
    assert flac.stat().st_size < 2**20  # what its bytes would suggest: nothing
    job = client.follow(client.create_job(uid, "transcribe", {"media": client.upload(flac, uid)}), timeout=60)
    _ended(job, JobStatus.REJECTED, "duration_exceeded")
    assert job.attempt == 0
    assert "max_duration_seconds" in job.error.message if job.error else False


def test_a_video_over_the_duration_cap_is_rejected_before_queueing(
    client: Client, uid: str, media_dir: Path
) -> None:
    video = long_video(media_dir / "long.mp4", 3700)
    uri = client.upload(video, uid, content_type="video/mp4")
    job = client.follow(client.create_job(uid, "video", {"video": uri}), timeout=60)
    _ended(job, JobStatus.REJECTED, "too_long")
    assert job.attempt == 0 and job.parts is None


def test_an_index_at_the_end_is_read_from_the_tail_before_queueing(
    client: Client, uid: str, media_dir: Path
) -> None:
    # Past the head the functions read: they read the object's tail as well, as ffprobe would.
    video = long_video(media_dir / "late-index.mp4", 3700, size="32x24", moving=True, faststart=False)
    assert 2 * HEAD_BYTES < video.stat().st_size < 3 * 2**20
    uri = client.upload(video, uid, content_type="video/mp4")
    job = client.follow(client.create_job(uid, "video", {"video": uri}), timeout=60)
    _ended(job, JobStatus.REJECTED, "too_long")
    assert job.attempt == 0


def test_a_video_the_functions_cannot_measure_is_refused_by_the_worker_before_decoding(
    client: Client, uid: str, media_dir: Path
) -> None:
    # An index larger than the tail the functions read: only the worker, with the whole file, can
    # measure it, and it does before the prepare step decodes anything.
    video = long_video(media_dir / "big-index.mp4", 3700, size="32x24", fps=25, faststart=False)
    assert video.stat().st_size < 3 * 2**20
    uri = client.upload(video, uid, content_type="video/mp4")
    job = client.follow(client.create_job(uid, "video", {"video": uri}), timeout=120)
    _ended(job, JobStatus.FAILED, "too_long")
    assert job.attempt == 1 and job.prepared is None  # refused once, for good, before any part


def test_an_image_over_the_pixel_cap_is_rejected_from_its_header(
    client: Client, uid: str, media_dir: Path
) -> None:
    path = media_dir / "huge.png"
    Image.new("1", (7000, 7000), 1).save(path)  # 49 million pixels in a few KB
    assert path.stat().st_size < 2**20
    uri = client.upload(path, uid, content_type="image/png")
    job = client.follow(
        client.create_job(uid, "edit", {"image": uri, "instruction": "add a hat"}), timeout=60
    )
    _ended(job, JobStatus.REJECTED, "image_too_large")
    assert job.attempt == 0


def test_a_text_over_max_chars_is_rejected_before_queueing(client: Client, uid: str) -> None:
    job = client.follow(client.create_job(uid, "tts", {"text": "Hello there. " * 1600}), timeout=60)
    _ended(job, JobStatus.REJECTED, "text_too_long")
    assert job.attempt == 0
    assert "max_chars" in job.error.message if job.error else False
