"""Connections a hostile caller holds open against the API (api/connections.py), on APIs served in
the test process with short deadlines, real Auth emulator tokens, and raw sockets on 127.0.0.1:
idle and slow-head connections are closed while other users are answered, a slow body ends as
408 and frees its handler, and a flood past the connection cap gets 503 with Retry-After."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from urllib.parse import urlsplit

import httpx
import pytest

from api.service import Api
from core.quota import QuotaPolicy
from devkit.apiserver import api_server
from devkit.firebase_auth import AuthUser, sign_up
from infra.localstack.stack import LocalStack
from infra.settings import Settings

pytestmark = pytest.mark.pipelines("flaky")

#: how long a test waits for the server to do something (never the figure it asserts)
PATIENCE = 60.0


def limited(settings: Settings, name: str, **update: object) -> Settings:
    return settings.model_copy(
        update={
            "jobs_collection": f"{name}-jobs",
            "quotas_collection": f"{name}-quotas",
            "quotas": QuotaPolicy(max_unfinished=100, max_daily=None, tiers={}),
            "api_head_seconds": 2.0,
            "api_body_seconds": 3.0,
            "api_busy_retry_seconds": 9,
            **update,
        }
    )


@pytest.fixture(scope="module")
def roomy(settings: Settings) -> Iterator[tuple[str, Api]]:
    with api_server(limited(settings, "conn-roomy", api_max_connections=200)) as served:
        yield served


@pytest.fixture(scope="module")
def small(settings: Settings) -> Iterator[tuple[str, Api]]:
    with api_server(limited(settings, "conn-small", api_max_connections=4)) as served:
        yield served


@pytest.fixture
def alice(stack: LocalStack) -> AuthUser:
    return sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])


def connect(url: str) -> socket.socket:
    where = urlsplit(url)
    return socket.create_connection((where.hostname or "127.0.0.1", where.port or 80), timeout=PATIENCE)


def closed_by_server(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_idle_and_slow_head_connections_are_closed_and_others_are_answered(
    roomy: tuple[str, Api], alice: AuthUser
) -> None:
    url, _ = roomy
    idle = [connect(url) for _ in range(20)]
    slow = [connect(url) for _ in range(20)]
    stop = threading.Event()

    def trickle() -> None:
        for byte in b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 10_000:
            if stop.wait(0.2):
                return
            for sock in slow:
                with suppress(OSError):
                    sock.send(bytes([byte]))

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        listed = httpx.get(f"{url}/v1/jobs", headers=alice.headers, timeout=PATIENCE)
        assert listed.status_code == 200, listed.text
        assert all(closed_by_server(sock) for sock in idle), "an idle connection stayed open"
        assert all(closed_by_server(sock) for sock in slow), "a head sent a byte at a time stayed open"
    finally:
        stop.set()
        for sock in idle + slow:
            sock.close()
    assert httpx.get(f"{url}/v1/jobs", headers=alice.headers, timeout=PATIENCE).status_code == 200


def test_a_slow_body_ends_as_408_and_frees_its_handler(small: tuple[str, Api], alice: AuthUser) -> None:
    url, _ = small
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {alice.headers['Authorization']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    ).encode()
    # As many slow bodies as the connection cap: if their handlers outlived them, the cap would
    # stay full and the request after them would get 503.
    slow = [connect(url) for _ in range(4)]
    for sock in slow:
        sock.sendall(head + b'{"pipeline": ')
    for sock in slow:
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, f"closed without an answer: {data!r}"
            data += chunk
        status_line, _, rest = data.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 408"), data
        assert b"connection: close" in rest.lower()
        problem = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert problem["code"] == "request_timeout" and problem["message"]
        assert closed_by_server(sock)
        sock.close()
    job = {"pipeline": "flaky", "inputs": {"steps": 1}}
    created = httpx.post(f"{url}/v1/jobs", headers=alice.headers, json=job, timeout=PATIENCE)
    assert created.status_code == 201, created.text


def test_a_flood_past_the_connection_cap_gets_503_with_retry_after(
    small: tuple[str, Api], alice: AuthUser
) -> None:
    url, _ = small
    flood = [connect(url) for _ in range(4)]
    try:
        time.sleep(0.5)  # (accepted by the server)
        refused = httpx.get(f"{url}/v1/jobs", headers=alice.headers, timeout=PATIENCE)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "9"
        assert refused.json()["code"] == "overloaded"
    finally:
        for sock in flood:
            sock.close()
    until(
        lambda: httpx.get(f"{url}/v1/jobs", headers=alice.headers, timeout=PATIENCE).status_code == 200,
        "the API kept refusing after the flood's connections closed",
    )
