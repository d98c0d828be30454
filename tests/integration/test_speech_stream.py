"""Streamed speech on the running stack: the ``openai`` client's ``with_streaming_response`` gets the
first audio while the job is still speaking the rest, the streamed bytes are as long as the final
file, a plain request is answered as before, and a streaming request past the wait caps is refused
before any job is made, and a caller that never reads its streamed answer gives its place under the
wait caps back at the speech timeout."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from api.service import Api
from core.quota import QuotaPolicy
from devkit.apiserver import api_server
from devkit.firebase_auth import AuthUser, sign_up
from infra.client import Client
from infra.localstack.stack import LocalStack
from infra.settings import Settings

pytestmark = pytest.mark.pipelines("tts")

#: about a dozen sentences: a dozen streamed chunks
TEXT = (
    "Good morning everyone, and welcome to the weekly engineering review. Today we will cover three "
    "topics. First, the state of the transcription service. Second, the results of the load tests. "
    "Third, the plan for the next release. The transcription service has been running in production "
    "for two weeks. During that time it processed more than four thousand recordings without a single "
    "crash. The load tests showed that one instance handles about twenty jobs per minute. For the next "
    "release we want to add speech synthesis, so that every report can also be listened to. Thank you "
    "all for coming, and see you again next week at the same time."
)


@pytest.fixture
def alice(stack: LocalStack) -> AuthUser:
    return sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])


def speech_client(base_url: str, user: AuthUser) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=user.token, max_retries=0, timeout=120)


def job_doc(client: Client, settings: Settings, job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = client.db.collection(settings.jobs_collection).document(job_id).get().to_dict()
    return found


def decoded_seconds(data: bytes, fmt: str, rate: int) -> float:
    """Seconds of audio that ffmpeg decodes from ``data``."""
    source = ["-f", "s16le", "-ar", str(rate), "-ac", "1"] if fmt == "pcm" else ["-f", fmt]
    out = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            *source,
            "-i",
            "pipe:0",
            "-f",
            "f32le",
            "-ac",
            "1",
            "-ar",
            str(rate),
            "pipe:1",
        ],
        input=data,
        capture_output=True,
        timeout=60,
        check=True,
    )
    return len(out.stdout) / 4 / rate


def test_streamed_speech_starts_while_the_job_is_still_speaking(
    stack: LocalStack, alice: AuthUser, client: Client, settings: Settings
) -> None:
    oa = speech_client(stack.env["API_URL"], alice)
    pieces: list[bytes] = []
    with oa.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="wav"
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/wav"
        assert "content-length" not in response.headers
        job_id = response.headers["x-job-id"]
        for piece in response.iter_bytes():
            if not pieces:
                # The first audio is here while the job is still speaking the rest.
                assert job_doc(client, settings, job_id)["status"] == "running"
            pieces.append(piece)
    streamed = b"".join(pieces)
    assert streamed[:4] == b"RIFF" and streamed[36:40] == b"data"

    job = job_doc(client, settings, job_id)
    assert job["status"] == "succeeded" and job["inputs"]["stream"] is True
    outputs = job["outputs"]
    assert outputs["chunks"] > 3
    # The final file is still the job's result, and the stream holds the same length of audio
    # (to a sample per chunk).
    assert outputs["audio"].endswith("/speech.wav")
    rate = outputs["sample_rate"]
    seconds = decoded_seconds(streamed, "wav", rate)
    assert abs(seconds - outputs["duration_seconds"]) <= outputs["chunks"] / rate + 0.002


def test_a_job_cancelled_after_the_first_byte_breaks_the_stream(stack: LocalStack, alice: AuthUser) -> None:
    oa = speech_client(stack.env["API_URL"], alice)
    with oa.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="pcm"
    ) as response:
        pieces = response.iter_bytes()
        assert next(pieces)
        job_id = response.headers["x-job-id"]
        cancel = httpx.post(
            f"{stack.env['API_URL']}/v1/jobs/{job_id}/cancel", headers=alice.headers, timeout=30
        )
        assert cancel.status_code == 200
        # The body never ends as if it were whole: the client sees the connection cut.
        # (the openai client's own copy of httpx raises its RemoteProtocolError)
        with pytest.raises(Exception, match="without sending complete message body") as broken:
            for _ in pieces:
                pass
        assert type(broken.value).__name__ == "RemoteProtocolError"


def test_streamed_mp3_plays_through(
    stack: LocalStack, alice: AuthUser, client: Client, settings: Settings
) -> None:
    oa = speech_client(stack.env["API_URL"], alice)
    with oa.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="mp3"
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        job_id = response.headers["x-job-id"]
        streamed = response.read()
    outputs = job_doc(client, settings, job_id)["outputs"]
    # Every chunk's frames decode, one after the other (each adds its encoder's priming).
    seconds = decoded_seconds(streamed, "mp3", outputs["sample_rate"])
    assert outputs["duration_seconds"] <= seconds < outputs["duration_seconds"] + 0.08 * outputs["chunks"]


def test_a_plain_request_is_answered_as_before(
    stack: LocalStack, alice: AuthUser, client: Client, settings: Settings
) -> None:
    oa = speech_client(stack.env["API_URL"], alice)
    raw = oa.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input="Two short sentences. Nothing streamed.", response_format="wav"
    )
    data = raw.content
    assert raw.status_code == 200 and int(raw.headers["content-length"]) == len(data)
    job = job_doc(client, settings, raw.headers["x-job-id"])
    assert "stream" not in job["inputs"]
    assert data[:4] == b"RIFF" and data[4:8] != b"\xff\xff\xff\xff"  # the whole file's header


# -- the caps, on an API whose jobs stay queued ------------------------------------------------------


@pytest.fixture(scope="module")
def one_wait_api(settings: Settings) -> Iterator[str]:
    """An API that lets a user hold one waiting request, on a jobs collection no trigger or service
    watches: its jobs are admitted and queued, and stay queued."""
    tight = settings.model_copy(
        update={
            "jobs_collection": "speech-stream-jobs",
            "quotas_collection": "speech-stream-quotas",
            "openai_speech_timeout_seconds": 6.0,
            "api_max_waits_per_user": 1,
            "quotas": QuotaPolicy(max_unfinished=5, max_daily=None, tiers={}),
        }
    )
    with api_server(tight) as (url, _api):
        yield url


def test_a_streaming_request_past_the_wait_cap_is_refused(one_wait_api: str, alice: AuthUser) -> None:
    oa = speech_client(one_wait_api, alice)
    first: dict[str, Any] = {}

    def stream() -> None:
        try:
            with oa.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input=TEXT, response_format="pcm"
            ) as response:
                first["status"] = response.status_code
        except openai.APIStatusError as exc:
            first["status"] = exc.status_code

    waiting = threading.Thread(target=stream)
    waiting.start()
    try:
        deadline = time.monotonic() + 30
        while not (jobs := my_jobs(one_wait_api, alice)):
            assert time.monotonic() < deadline, "the first request made no job"
            time.sleep(0.1)
        with pytest.raises(openai.RateLimitError) as caught:
            oa.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input=TEXT, response_format="pcm"
            ).__enter__()
        assert caught.value.code == "rate_limit_exceeded" and "the limit is 1" in caught.value.message
        assert int(caught.value.response.headers["Retry-After"]) > 0
        assert [j["id"] for j in my_jobs(one_wait_api, alice)] == [jobs[0]["id"]]  # no second job
    finally:
        waiting.join(timeout=60)
    # The first one, whose job never ran, is the usual 504 (no byte was sent).
    assert first["status"] == 504


def my_jobs(api_url: str, user: AuthUser) -> list[dict[str, Any]]:
    resp = httpx.get(f"{api_url}/v1/jobs", headers=user.headers, timeout=30)
    jobs: list[dict[str, Any]] = resp.json()["jobs"]
    return jobs


# -- a caller that never reads its streamed answer ---------------------------------------------------

#: the tight API's wait for a speech job: long enough for the first chunk on a busy machine
UNREAD_TIMEOUT = 25.0


@pytest.fixture(scope="module")
def one_place_api(settings: Settings) -> Iterator[tuple[str, Api]]:
    """An API on the stack's jobs (they run) with one place for waiting requests, the user's and
    the instance's, and a short wait for speech; its connections' small send buffers make its
    writes to a caller who reads nothing wait within the first chunk of audio."""
    tight = settings.model_copy(
        update={
            "quotas_collection": "speech-unread-quotas",
            "openai_speech_timeout_seconds": UNREAD_TIMEOUT,
            "api_max_waits_per_user": 1,
            "api_max_waits": 1,
            "quotas": QuotaPolicy(max_unfinished=5, max_daily=None, tiers={}),
        }
    )
    with api_server(tight, send_buffer_bytes=16384) as served:
        yield served


def unread_stream(api_url: str, user: AuthUser, text: str) -> socket.socket:
    """A streaming speech request on a raw socket whose caller will read nothing: a small receive
    buffer, so that the server's writes soon wait on it."""
    body = json.dumps({"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}).encode()
    port = int(api_url.rsplit(":", 1)[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(UNREAD_TIMEOUT + 60)
    sock.connect(("127.0.0.1", port))
    head = (
        f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {user.token}\r\nContent-Type: application/json\r\n"
        f"X-Stainless-Raw-Response: stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def test_a_streamed_answer_nobody_reads_gives_its_place_back_at_the_timeout(
    stack: LocalStack, one_place_api: tuple[str, Api]
) -> None:
    url, api = one_place_api
    auth = stack.env["FIREBASE_AUTH_EMULATOR_HOST"]
    alice, bob = sign_up(auth), sign_up(auth)
    oa_alice, oa_bob = speech_client(url, alice), speech_client(url, bob)
    unread = unread_stream(url, alice, TEXT)
    try:
        # The first audio is on its way (looked at, not read: the bytes stay where they are).
        assert unread.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 200"
        # Its place is taken: the next waiting request, hers or anyone's, is refused ...
        for oa in (oa_alice, oa_bob):
            with pytest.raises(openai.APIStatusError) as caught:
                oa.audio.speech.create(model="tts-1", voice="alloy", input="Hello.", response_format="wav")
            assert caught.value.status_code == 503
        # ... until the speech timeout, though the server's writes wait on a caller who never reads.
        deadline = time.monotonic() + UNREAD_TIMEOUT + 60
        while api.waits.count() > 0:
            assert time.monotonic() < deadline, "the unread stream still holds its place"
            time.sleep(0.2)
        # (the job goes on without its reader: cancelled, to leave the worker to the next ones)
        job_id = my_jobs(url, alice)[0]["id"]
        httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers=alice.headers, timeout=30)
        for oa in (oa_alice, oa_bob):
            raw = oa.audio.speech.with_raw_response.create(
                model="tts-1", voice="alloy", input="Hello again.", response_format="wav"
            )
            assert raw.status_code == 200 and raw.content[:4] == b"RIFF"
    finally:
        unread.close()
