"""The API under load and abuse, on the running stack with real Auth emulator tokens: bodies
refused before they are read, tokens checked before anything else, waits and event streams that
hold no worker thread, are capped per user and in all, and stop when the caller goes away;
idempotent creates a client can live with; event streams that notice a revoked user.

The waiting tests use APIs served in the test process with tighter settings, on jobs collections
that no trigger or GPU service watches: their jobs are admitted and stay queued until cancelled.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from api.service import Api, job_id_for
from core.quota import QuotaPolicy
from devkit.apiserver import api_server
from devkit.firebase_auth import AuthUser, sign_up
from infra.client import Client
from infra.localstack.stack import LocalStack
from infra.settings import Settings

pytestmark = pytest.mark.pipelines("flaky", "tts")

JOB = {"pipeline": "flaky", "inputs": {"steps": 1}}


@pytest.fixture
def alice(stack: LocalStack) -> AuthUser:
    return sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])


@pytest.fixture
def bob(stack: LocalStack) -> AuthUser:
    return sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])


@pytest.fixture
def carol(stack: LocalStack) -> AuthUser:
    return sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])


@pytest.fixture(scope="module")
def roomy(settings: Settings) -> Iterator[tuple[str, Api]]:
    """An API whose caps are far away: what waiting costs, without any refusal."""
    roomy = settings.model_copy(
        update={
            "jobs_collection": "roomy-jobs",
            "quotas_collection": "roomy-quotas",
            "api_max_waits_per_user": 100,
            "api_max_waits": 100,
            "api_max_wait_seconds": 120,
        }
    )
    with api_server(roomy) as served:
        yield served


@pytest.fixture(scope="module")
def tight(settings: Settings) -> Iterator[tuple[str, Api]]:
    """An API with small caps, one unfinished job per user, and a stream re-check every second."""
    tight = settings.model_copy(
        update={
            "jobs_collection": "tight-jobs",
            "quotas_collection": "tight-quotas",
            "quotas": QuotaPolicy(max_unfinished=1, max_daily=None, tiers={}),
            "api_max_waits_per_user": 2,
            "api_max_waits": 3,
            "api_max_streams_per_user": 1,
            "api_busy_retry_seconds": 7,
            "api_max_wait_seconds": 120,
            "api_stream_recheck_seconds": 1.0,
        }
    )
    with api_server(tight) as served:
        yield served


def until(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def post_job(
    url: str, user: AuthUser, key: str | None = None, wait: float = 0, body: dict[str, Any] = JOB
) -> httpx.Response:
    headers = {**user.headers, **({"Idempotency-Key": key} if key else {})}
    return httpx.post(f"{url}/v1/jobs", params={"wait": wait}, headers=headers, json=body, timeout=180)


def problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["code"] == code and body["message"], body
    return body


def raw_request(url: str, head: str, body: bytes | Iterator[bytes] = b"") -> tuple[int, bytes]:
    """Send a request as raw bytes (the body from a thread, so that an early answer is read
    while the client is still sending, as a real client would see it); the answer's status
    and body."""
    where = urlsplit(url)
    sock = socket.create_connection((where.hostname or "127.0.0.1", where.port or 80), timeout=60)

    def send() -> None:
        try:
            sock.sendall(head.encode() + b"\r\n")
            for chunk in [body] if isinstance(body, bytes) else body:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed before the whole body was sent

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    try:
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            assert data, f"the connection closed without an answer: {answer!r}"
            answer += data
        header, _, rest = answer.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in header.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            data = sock.recv(65536)
            assert data
            rest += data
    finally:
        sock.close()
    return int(header.split(b" ", 2)[1]), rest[:length]


# -- before anything reads the body ----------------------------------------------------------------


def test_an_anonymous_32_mib_body_is_refused_before_it_is_read(stack: LocalStack, settings: Settings) -> None:
    pid = stack.pid("api")
    # Many small JSON values: the kind of body whose parsing costs far more than its size.
    body = b'{"pipeline": "flaky", "inputs": {"x": [' + b"[]," * (32 * 2**20 // 3 - 20) + b"[]]}}"
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    status, answer = raw_request(stack.env["API_URL"], head, body)
    assert status == 413, answer
    assert json.loads(answer)["code"] == "too_large"
    # The API (under its Cloud Run memory) is the same process, alive and answering.
    assert stack.pid("api") == pid
    assert httpx.get(f"{stack.env['API_URL']}/healthz", timeout=30).status_code == 200
    limit = stack.memory["api"]
    assert limit.oom_kills() == 0
    print(
        f"api peak memory {(limit.peak() or 0) / 2**20:.0f} MiB ({limit.mechanism}, {limit.limit // 2**20} MiB)"
    )


def test_a_body_without_a_length_is_cut_at_the_limit(stack: LocalStack, alice: AuthUser) -> None:
    def chunked(parts: list[bytes]) -> Iterator[bytes]:
        for part in parts:
            yield b"%x\r\n%s\r\n" % (len(part), part)
        yield b"0\r\n\r\n"

    piece = b'"' + b"x" * 65534 + b'",'
    parts = [b'{"pipeline": "flaky", "inputs": {"x": [', *[piece] * 40, b'"x"]}}']  # 2.5 MiB: over 1 MiB
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {alice.token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    )
    status, answer = raw_request(stack.env["API_URL"], head, chunked(parts))
    assert status == 413, answer
    assert json.loads(answer)["code"] == "too_large"


def test_the_token_is_checked_before_the_body(stack: LocalStack) -> None:
    url = stack.env["API_URL"]
    for resp in [
        httpx.post(f"{url}/v1/jobs", content=b"{", headers={"Content-Type": "application/json"}),
        httpx.post(f"{url}/v1/uploads", json={"name": 1}),
    ]:
        problem(resp, 401, "unauthenticated")
    speech = httpx.post(f"{url}/v1/audio/speech", content=b"not json")
    assert speech.status_code == 401 and speech.json()["error"]["code"] == "invalid_api_key"


# -- waiting ------------------------------------------------------------------------------------


def test_many_waiting_callers_hold_no_thread_and_share_one_listener(
    roomy: tuple[str, Api], alice: AuthUser, bob: AuthUser
) -> None:
    url, api = roomy
    key = uuid.uuid4().hex
    first = post_job(url, alice, key)
    assert first.status_code == 201 and first.json()["status"] == "queued", first.text
    job_id = first.json()["id"]
    n = 60  # more than the worker threads (40)
    with ThreadPoolExecutor(n) as pool:
        waiting = [pool.submit(post_job, url, alice, key, 120) for _ in range(n)]
        until(lambda: api.waits.count() == n, "the callers never all waited")
        assert api.watches.open == 1
        # Another user is answered while every one of them is still waiting.
        assert httpx.get(f"{url}/v1/jobs", headers=bob.headers, timeout=60).status_code == 200
        assert not any(f.done() for f in waiting)
        cancel = httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers=alice.headers, timeout=60)
        assert cancel.status_code == 200, cancel.text
        answers = [f.result() for f in waiting]
    assert {(a.status_code, a.json()["status"]) for a in answers} == {(200, "cancelled")}
    until(lambda: api.watches.open == 0 and api.waits.count() == 0, "the listener was not closed")


def test_a_caller_that_goes_away_stops_waiting(roomy: tuple[str, Api], alice: AuthUser) -> None:
    url, api = roomy
    requests = [
        ("/v1/jobs?wait=120", json.dumps(JOB)),
        ("/v1/audio/speech", json.dumps({"model": "tts-1", "voice": "alloy", "input": "Hello there."})),
    ]
    for path, body in requests:
        where = urlsplit(url)
        sock = socket.create_connection((where.hostname or "", where.port or 80), timeout=30)
        sock.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {alice.token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
        until(lambda: api.waits.count(alice.uid) == 1 and api.watches.open == 1, f"{path} never waited")
        sock.close()
        until(lambda: api.waits.count() == 0 and api.watches.open == 0, f"{path} kept waiting")
    # The jobs go on (queued here: nothing runs this collection's jobs).
    jobs = httpx.get(f"{url}/v1/jobs", headers=alice.headers, timeout=30).json()["jobs"]
    assert sorted(j["pipeline"] for j in jobs) == ["flaky", "tts"]
    assert {j["status"] for j in jobs} == {"queued"}
    for job in jobs:
        httpx.post(f"{url}/v1/jobs/{job['id']}/cancel", headers=alice.headers, timeout=30)


def test_waits_and_streams_past_the_caps_are_refused_with_retry_after(
    tight: tuple[str, Api], alice: AuthUser, bob: AuthUser, carol: AuthUser
) -> None:
    url, api = tight
    key_a, key_b = uuid.uuid4().hex, uuid.uuid4().hex
    job_a = post_job(url, alice, key_a).json()
    job_b = post_job(url, bob, key_b).json()
    with ThreadPoolExecutor(3) as pool:
        held = [pool.submit(post_job, url, alice, key_a, 120) for _ in range(2)]
        until(lambda: api.waits.count(alice.uid) == 2, "alice's waits never started")
        # Past alice's own cap: 429, and no job was made for it.
        refused = post_job(url, alice, uuid.uuid4().hex, 120, {"pipeline": "flaky", "inputs": {"steps": 2}})
        problem(refused, 429, "too_many_requests")
        assert refused.headers["Retry-After"] == "7"
        mine = httpx.get(f"{url}/v1/jobs", headers=alice.headers, timeout=30).json()["jobs"]
        assert [j["id"] for j in mine] == [job_a["id"]]
        held.append(pool.submit(post_job, url, bob, key_b, 120))
        until(lambda: api.waits.count() == 3, "bob's wait never started")
        # Past the instance's cap: 503 for a user who has nothing open.
        busy = post_job(url, carol, uuid.uuid4().hex, 120)
        problem(busy, 503, "overloaded")
        assert busy.headers["Retry-After"] == "7"

        # One event stream per user here.
        events = f"{url}/v1/jobs/{job_a['id']}/events"
        with httpx.stream("GET", events, headers=alice.headers, timeout=60) as first:
            assert first.status_code == 200
            second = httpx.get(events, headers=alice.headers, timeout=60)
            problem(second, 429, "too_many_requests")
            assert second.headers["Retry-After"] == "7"
        until(lambda: api.streams.count() == 0, "the closed stream kept its place")

        for job in (job_a, job_b):
            owner = alice if job is job_a else bob
            httpx.post(f"{url}/v1/jobs/{job['id']}/cancel", headers=owner.headers, timeout=30)
        assert [f.result().json()["status"] for f in held] == ["cancelled"] * 3
    until(lambda: api.waits.count() == 0, "the waits kept their places")


# -- idempotency ----------------------------------------------------------------------------------


def test_a_create_refused_over_quota_is_admitted_on_a_later_retry_with_its_key(
    tight: tuple[str, Api], alice: AuthUser
) -> None:
    url, _api = tight
    running = post_job(url, alice).json()
    key = uuid.uuid4().hex
    body = {"pipeline": "flaky", "inputs": {"steps": 3}}
    for _ in range(2):  # refused while the first job is unfinished, however often it is retried
        refused = post_job(url, alice, key, body=body)
        problem(refused, 429, "quota_exceeded")
        assert int(refused.headers["Retry-After"]) > 0
    httpx.post(f"{url}/v1/jobs/{running['id']}/cancel", headers=alice.headers, timeout=30)
    admitted = post_job(url, alice, key, body=body)
    assert admitted.status_code == 201, admitted.text
    assert admitted.json()["id"] == job_id_for(alice.uid, key)
    assert admitted.json()["status"] == "queued" and admitted.json()["error"] is None
    again = post_job(url, alice, key, body=body)
    assert again.status_code == 200 and again.json()["id"] == admitted.json()["id"]
    httpx.post(f"{url}/v1/jobs/{admitted.json()['id']}/cancel", headers=alice.headers, timeout=30)


def test_a_replay_never_answers_with_someone_elses_job(
    stack: LocalStack, client: Client, alice: AuthUser, bob: AuthUser
) -> None:
    key = "order-1"  # a key someone else can guess
    taken = job_id_for(alice.uid, key)
    # Bob creates the document first, as a client app may (job ids are the client's to choose).
    client.db.collection("jobs").document(taken).create({**JOB, "uid": bob.uid, "status": "pending"})
    resp = post_job(stack.env["API_URL"], alice, key)
    body = problem(resp, 409, "idempotency_key_reused")
    assert bob.uid not in resp.text and "not yours" in body["message"]


# -- event streams --------------------------------------------------------------------------------


def test_an_event_stream_ends_when_its_user_is_disabled(
    stack: LocalStack, settings: Settings, tight: tuple[str, Api], alice: AuthUser
) -> None:
    url, _api = tight
    job = post_job(url, alice).json()
    seen: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("GET", f"{url}/v1/jobs/{job['id']}/events", headers=alice.headers, timeout=60) as resp:
        event = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event:
                seen.append((event, json.loads(line.removeprefix("data: "))))
                if len(seen) == 1:
                    disable(stack, settings, alice.uid)
    assert [kind for kind, _ in seen] == ["job", "error"], seen
    assert seen[0][1]["status"] == "queued"
    assert seen[1][1]["code"] == "invalid_token" and "disabled" in seen[1][1]["message"]


def disable(stack: LocalStack, settings: Settings, uid: str) -> None:
    """Disable a user in the Auth emulator, as an administrator would."""
    resp = httpx.post(
        f"http://{stack.env['FIREBASE_AUTH_EMULATOR_HOST']}/identitytoolkit.googleapis.com/v1/projects/"
        f"{settings.google_cloud_project}/accounts:update",
        json={"localId": uid, "disableUser": True},
        headers={"Authorization": "Bearer owner"},
        timeout=30,
    )
    resp.raise_for_status()
