"""OpenAI's speech API on the running stack, called with the official ``openai`` client and a real
Auth emulator token as its API key: playable audio, OpenAI-shaped errors, and the job it makes
(listed, counted against the quota, named by a 504 when it outlasts the wait)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from core.contract import JobMessage
from core.quota import QuotaPolicy
from devkit.apiserver import api_server
from devkit.firebase_auth import AuthUser, sign_up, tampered
from infra.client import Client
from infra.localstack.stack import LocalStack
from infra.settings import Settings

pytestmark = pytest.mark.pipelines("tts")

SENTENCE = "Please send the quarterly report to the finance team before Friday afternoon."


@pytest.fixture
def alice(stack: LocalStack) -> AuthUser:
    return sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])


def speech_client(base_url: str, user: AuthUser | None = None, key: str | None = None) -> openai.OpenAI:
    # No retries of its own: each call here must make exactly one request (and at most one job).
    return openai.OpenAI(
        base_url=f"{base_url}/v1", api_key=key or (user.token if user else ""), max_retries=0, timeout=120
    )


@pytest.fixture
def oa(stack: LocalStack, alice: AuthUser) -> openai.OpenAI:
    return speech_client(stack.env["API_URL"], alice)


def probe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name:format=duration",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found: dict[str, Any] = json.loads(out.stdout)
    return found


def my_jobs(api_url: str, user: AuthUser) -> list[dict[str, Any]]:
    resp = httpx.get(f"{api_url}/v1/jobs", headers=user.headers, timeout=30)
    jobs: list[dict[str, Any]] = resp.json()["jobs"]
    return jobs


# -- audio -------------------------------------------------------------------------------------------


CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
}


@pytest.mark.parametrize(
    ("response_format", "codec"),
    [("mp3", "mp3"), ("wav", "pcm_s16le"), ("opus", "opus"), ("aac", "aac"), ("flac", "flac")],
)
def test_the_openai_client_gets_playable_audio(
    stack: LocalStack,
    oa: openai.OpenAI,
    alice: AuthUser,
    client: Client,
    tmp_path: Path,
    response_format: Any,
    codec: str,
) -> None:
    raw = oa.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input=SENTENCE, response_format=response_format
    )
    assert raw.status_code == 200
    assert raw.headers["content-type"] == CONTENT_TYPES[response_format]
    path = tmp_path / f"speech.{response_format}"
    raw.parse().write_to_file(path)
    found = probe(path)
    assert [s["codec_name"] for s in found["streams"]] == [codec]
    # Twelve words at a natural pace.
    assert 2.0 < float(found["format"]["duration"]) < 12.0

    # The request was an ordinary job of the caller's: listed, with OpenAI's voice mapped
    # (OPENAI_VOICES on the test stack), and counted against the quota.
    jobs = my_jobs(stack.env["API_URL"], alice)
    assert [(j["id"], j["pipeline"], j["status"]) for j in jobs] == [
        (raw.headers["x-job-id"], "tts", "succeeded")
    ]
    assert jobs[0]["inputs"]["text"] == SENTENCE and jobs[0]["inputs"]["voice"] == "joe"
    assert jobs[0]["outputs"]["format"] == response_format
    ledger = client.db.collection("quotas").document(alice.uid).get().to_dict()
    # counted in the day; the commit that ended it also took it off the unfinished list
    assert ledger["daily"]["tts"] == 1 and raw.headers["x-job-id"] not in ledger.get("active", {})


def test_raw_pcm_is_24_khz_16_bit_mono(oa: openai.OpenAI) -> None:
    raw = oa.audio.speech.with_raw_response.create(
        model="gpt-4o-mini-tts",
        voice="nova",
        input=SENTENCE,
        response_format="pcm",
        speed=1.25,
        instructions="Speak calmly.",  # accepted, and ignored
    )
    assert raw.headers["content-type"] == "audio/pcm"
    audio = raw.parse().content
    seconds = len(audio) / (2 * 24000)
    assert len(audio) % 2 == 0 and 1.5 < seconds < 10.0


def test_a_retry_with_the_same_idempotency_key_answers_from_the_same_job(
    stack: LocalStack, oa: openai.OpenAI, alice: AuthUser
) -> None:
    key = {"Idempotency-Key": "greeting-1"}
    first = oa.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input=SENTENCE, extra_headers=key
    )
    again = oa.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input=SENTENCE, extra_headers=key
    )
    assert again.headers["x-job-id"] == first.headers["x-job-id"]
    assert again.parse().content == first.parse().content
    assert len(my_jobs(stack.env["API_URL"], alice)) == 1


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "param", "says"),
    [
        ({"voice": "nobody-here"}, "voice", "nobody-here"),
        ({"voice": "../../etc/passwd"}, "voice", "alloy"),
        ({"input": ""}, "input", "at least 1 character"),
        ({"input": "word " * 1000}, "input", "at most 4096 characters"),
        ({"response_format": "ogg"}, "response_format", "'mp3', 'opus', 'aac', 'flac', 'wav' or 'pcm'"),
        ({"speed": 5.0}, "speed", "less than or equal to 4"),
        ({"speed": 0.2}, "speed", "greater than or equal to 0.25"),
        ({"input": "Speaker 1: Hello.\nSpeaker 2: Hi there."}, "voice", "POST /v1/jobs"),
    ],
    ids=[
        "unknown-voice",
        "not-a-voice-name",
        "empty-input",
        "too-long-input",
        "bad-format",
        "too-fast",
        "too-slow",
        "two-speaker-script",
    ],
)
def test_bad_requests_are_openai_bad_request_errors(
    stack: LocalStack, oa: openai.OpenAI, alice: AuthUser, changes: dict[str, Any], param: str, says: str
) -> None:
    request: dict[str, Any] = {"model": "tts-1", "voice": "alloy", "input": SENTENCE, **changes}
    with pytest.raises(openai.BadRequestError) as caught:
        oa.audio.speech.create(**request)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert says in error["message"], error
    # Refused before any job could run: nothing of the caller's is running or queued.
    assert all(j["status"] == "rejected" for j in my_jobs(stack.env["API_URL"], alice))


def test_other_routes_and_methods_under_v1_audio_answer_in_openais_shape(
    stack: LocalStack, alice: AuthUser
) -> None:
    api = stack.env["API_URL"]
    wrong_method = httpx.get(f"{api}/v1/audio/speech", headers=alice.headers, timeout=30)
    no_route = httpx.post(f"{api}/v1/audio/transcriptions", headers=alice.headers, json={}, timeout=30)
    for resp, status in [(wrong_method, 405), (no_route, 404)]:
        assert resp.status_code == status
        assert set(resp.json()) == {"error"} and resp.json()["error"]["type"] == "invalid_request_error"
    assert "POST /v1/audio/transcriptions" in no_route.json()["error"]["message"]


def test_an_unknown_model_is_not_found(oa: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        oa.audio.speech.create(model="tts-2", voice="alloy", input=SENTENCE)
    assert caught.value.code == "model_not_found" and "tts-1" in caught.value.message


@pytest.mark.parametrize(
    "make_key",
    [
        lambda u: "sk-not-a-firebase-token",
        lambda u: tampered(u.token, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        lambda u: tampered(u.token, sub="made-up-user", user_id="made-up-user"),
    ],
    ids=["openai-style-key", "expired-token", "forged-user"],
)
def test_a_bad_key_is_an_authentication_error(stack: LocalStack, alice: AuthUser, make_key: Any) -> None:
    oa = speech_client(stack.env["API_URL"], key=make_key(alice))
    with pytest.raises(openai.AuthenticationError) as caught:
        oa.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE)
    assert caught.value.code == "invalid_api_key"
    # a forged user is caught by the revocation check, which finds no such user
    assert "ID token" in caught.value.message or "no longer exists" in caught.value.message
    assert my_jobs(stack.env["API_URL"], alice) == []


# -- waiting and quota, on an API with tighter settings ----------------------------------------------


@pytest.fixture(scope="module")
def impatient_api(settings: Settings) -> Iterator[str]:
    """An API that waits for no job and lets a user have one unfinished job, on a jobs collection
    no trigger or service watches: its jobs are admitted and queued, and stay queued."""
    tight = settings.model_copy(
        update={
            "jobs_collection": "speech-jobs",
            "quotas_collection": "speech-quotas",
            "openai_speech_timeout_seconds": 0.001,
            "quotas": QuotaPolicy(max_unfinished=1, max_daily=None, tiers={}),
        }
    )
    with api_server(tight) as (url, _api):
        yield url


def test_a_job_that_outlasts_the_wait_is_a_504_naming_it(impatient_api: str, alice: AuthUser) -> None:
    oa = speech_client(impatient_api, alice)
    with pytest.raises(openai.InternalServerError) as caught:
        oa.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE)
    assert caught.value.status_code == 504 and caught.value.code == "timeout"
    assert caught.value.response.headers["x-should-retry"] == "false"
    jobs = my_jobs(impatient_api, alice)
    assert [(j["pipeline"], j["status"]) for j in jobs] == [("tts", "queued")]
    assert f"job {jobs[0]['id']} did not finish" in caught.value.message
    assert f"/v1/jobs/{jobs[0]['id']}/results" in caught.value.message


def test_a_speech_job_counts_against_the_quota(impatient_api: str, alice: AuthUser, client: Client) -> None:
    oa = speech_client(impatient_api, alice)
    with pytest.raises(openai.InternalServerError):
        oa.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE)  # admitted, still queued
    with pytest.raises(openai.RateLimitError) as caught:
        oa.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE)
    assert caught.value.code == "rate_limit_exceeded" and "the limit is 1" in caught.value.message
    assert int(caught.value.response.headers["Retry-After"]) > 0
    jobs = my_jobs(impatient_api, alice)
    assert [(j["status"], (j.get("error") or {}).get("code")) for j in jobs] == [
        ("rejected", "quota_exceeded"),
        ("queued", None),
    ]
    ledger = client.db.collection("speech-quotas").document(alice.uid).get().to_dict()
    assert list(ledger["active"]) == [jobs[1]["id"]]


# -- a reused result, on an API with reuse on for tts ------------------------------------------------


def test_the_same_request_again_is_answered_with_the_reused_jobs_audio(
    settings: Settings, alice: AuthUser
) -> None:
    """With REUSE_PIPELINES=tts, the same user's same request is answered with the finished job's
    audio, from a new job that names it (reusedFrom) and spent no GPU time."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    from core.contract import JobStatus, read_job
    from gpu_service.pool import ModelPool
    from gpu_service.worker import Worker
    from infra.blobs import BlobStore, storage_client
    from infra.bus import Bus
    from infra.jobs import JobStore, firestore_client
    from pipelines.registry import catalog

    reusing = settings.model_copy(
        update={
            "jobs_collection": "speech-reuse-jobs",
            "quotas_collection": "speech-reuse-quotas",
            "reuse_pipelines": ["tts"],
            "openai_speech_timeout_seconds": 120.0,
        }
    )
    # This process's own worker runs the first job (no trigger or service watches the collection).
    pipelines = catalog(["tts"], reusing.plugins, reusing.pipelines)
    db = firestore_client(reusing)
    jobs = JobStore(db, reusing.jobs_collection, reusing.quotas_collection)
    worker = Worker(
        reusing, pipelines, jobs, BlobStore(storage_client(reusing)), ModelPool(pipelines), Bus(reusing)
    )
    ran: list[str] = []

    def run_queued(stop: threading.Event) -> None:
        while not stop.is_set():
            mine = db.collection(reusing.jobs_collection).where(filter=FieldFilter("uid", "==", alice.uid))
            for snap in mine.stream():
                job = read_job(snap.to_dict() or {})
                if job.status is JobStatus.QUEUED and snap.id not in ran:
                    ran.append(snap.id)
                    worker.process(JobMessage(job_id=snap.id, pipeline="tts"))
            stop.wait(0.2)

    stop = threading.Event()
    runner = threading.Thread(target=run_queued, args=(stop,), daemon=True)
    runner.start()
    try:
        with api_server(reusing) as (url, _api):
            oa = speech_client(url, alice)
            first = oa.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input=SENTENCE)
            again = oa.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input=SENTENCE)
    finally:
        stop.set()
        runner.join(30)
    assert first.status_code == 200 and again.status_code == 200
    original, reuse = first.headers["x-job-id"], again.headers["x-job-id"]
    assert reuse != original and again.parse().content == first.parse().content
    assert ran == [original]  # the second request ran nothing
    second = read_job(db.collection(reusing.jobs_collection).document(reuse).get().to_dict() or {})
    assert second.status is JobStatus.SUCCEEDED and second.reused_from == original
    assert second.usage is not None and second.usage.gpu_seconds == 0.0
