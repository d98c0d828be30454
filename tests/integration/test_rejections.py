"""Every bad request ends as ``rejected`` with an error a person can act on, and nothing hangs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.contract import JobStatus
from devkit.speech import synthesize
from infra.client import Client

# Every job here is refused by the functions before any GPU time; transcribe is the pipeline the
# valid-looking requests name.
pytestmark = pytest.mark.pipelines("transcribe")


@pytest.fixture(scope="module")
def wav(media_dir: Path) -> Path:
    return synthesize("A short clip.", media_dir / "short.wav")


def _reject(client: Client, uid: str, pipeline: str, inputs: dict[str, Any]) -> Any:
    job = client.follow(client.create_job(uid, pipeline, inputs), timeout=60)
    assert job.status is JobStatus.REJECTED, (job.status, job.outputs)
    assert job.error is not None and job.error.retryable is False
    assert job.attempt == 0  # never reached the GPU service
    return job.error


Case = Callable[[Client, str, Path], tuple[str, dict[str, Any]]]


def _unknown_pipeline(c: Client, uid: str, wav: Path) -> tuple[str, dict[str, Any]]:
    return "paint-my-house", {"media": c.upload(wav, uid)}


def _missing_object(c: Client, uid: str, wav: Path) -> tuple[str, dict[str, Any]]:
    return "transcribe", {"media": f"gs://{c.settings.media_bucket}/uploads/{uid}/nope.wav"}


def _other_users_object(c: Client, uid: str, wav: Path) -> tuple[str, dict[str, Any]]:
    return "transcribe", {"media": c.upload(wav, f"{uid}-victim")}


def _other_bucket(c: Client, uid: str, wav: Path) -> tuple[str, dict[str, Any]]:
    return "transcribe", {"media": f"gs://someone-elses-bucket/uploads/{uid}/short.wav"}


def _wrong_content_type(c: Client, uid: str, wav: Path) -> tuple[str, dict[str, Any]]:
    return "transcribe", {"media": c.upload(wav, uid, name="notes.txt", content_type="text/plain")}


def _too_large(c: Client, uid: str, wav: Path) -> tuple[str, dict[str, Any]]:
    big = wav.with_name("big.wav")
    big.write_bytes(wav.read_bytes() + b"\0" * (4 * 2**20))  # over the stack's 3 MiB cap
    return "transcribe", {"media": c.upload(big, uid, content_type="audio/wav")}


def _schema_out_of_range(c: Client, uid: str, wav: Path) -> tuple[str, dict[str, Any]]:
    return "transcribe", {"media": c.upload(wav, uid), "beam_size": 99}


def _schema_unknown_field(c: Client, uid: str, wav: Path) -> tuple[str, dict[str, Any]]:
    return "transcribe", {"media": c.upload(wav, uid), "speed": "fast"}


def _schema_not_a_uri(c: Client, uid: str, wav: Path) -> tuple[str, dict[str, Any]]:
    return "transcribe", {"media": "https://example.com/talk.wav"}


def _schema_missing_field(c: Client, uid: str, wav: Path) -> tuple[str, dict[str, Any]]:
    return "transcribe", {"language": "en"}


@pytest.mark.parametrize(
    ("case", "code", "says"),
    [
        (
            _unknown_pipeline,
            "unknown_pipeline",
            "unknown pipeline 'paint-my-house'; available: {enabled}",
        ),
        (_missing_object, "object_not_found", "does not exist"),
        (_other_users_object, "forbidden_object", "does not belong to user"),
        (_other_bucket, "wrong_bucket", "files must be in gs://"),
        (_wrong_content_type, "unsupported_content_type", "content type 'text/plain' is not accepted"),
        (_too_large, "too_large", "the limit is 3145728"),
        (_schema_out_of_range, "invalid_inputs", "beam_size"),
        (_schema_unknown_field, "invalid_inputs", "speed"),
        (_schema_not_a_uri, "invalid_inputs", "gs://BUCKET/PATH"),
        (_schema_missing_field, "invalid_inputs", "media: Field required"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_bad_request_is_rejected_with_a_clear_error(
    client: Client, uid: str, wav: Path, case: Case, code: str, says: str, enabled_pipelines: list[str]
) -> None:
    pipeline, inputs = case(client, uid, wav)
    error = _reject(client, uid, pipeline, inputs)
    assert error.code == code
    # The pipelines this deployment runs: the session's stack runs those its tests declare.
    assert says.format(enabled=", ".join(sorted(enabled_pipelines))) in error.message


def test_undecodable_media_is_rejected_with_its_code(client: Client, uid: str, media_dir: Path) -> None:
    junk = media_dir / "junk.wav"
    junk.write_bytes(b"RIFF....WAVEthis is not audio at all" * 50)
    uri = client.upload(junk, uid, content_type="audio/wav")
    job = client.follow(client.create_job(uid, "transcribe", {"media": uri}), timeout=60)
    # The functions read all of so small a file before queueing it (pipelines/media.py): no GPU
    # time is spent on it. (A file too large to read whole is refused by the worker: failed, with
    # the same code; tests/integration/test_media_limits_e2e.py.)
    assert job.status is JobStatus.REJECTED
    assert job.error and job.error.code == "unsupported_media" and not job.error.retryable
    assert job.attempt == 0


def test_drop_upload_with_invalid_job_id_is_rejected(client: Client, uid: str, wav: Path) -> None:
    client.upload(wav, uid, pipeline="transcribe", metadata={"jobId": "no spaces/or slashes"})
    for _ in range(100):
        jobs = client.list(uid)
        if jobs:
            break
        import time

        time.sleep(0.1)
    [(_, job)] = jobs
    assert job.status is JobStatus.REJECTED
    assert job.error and job.error.code == "invalid_job_id"
    # Created already final: it owes its end event from its creation (docs/notifications.md).
    assert job.notifications is not None and job.notifications.state in ("owed", "done")


def test_drop_upload_to_unknown_pipeline_is_rejected(client: Client, uid: str, wav: Path) -> None:
    client.upload(wav, uid, pipeline="karaoke", metadata={"jobId": f"k-{uid}"})
    job = client.follow(f"k-{uid}", timeout=60)
    assert job.status is JobStatus.REJECTED
    assert job.error and job.error.code == "unknown_pipeline"
