"""The local stack's Eventarc relay: answers at once, delivers events unchanged, several at a
time, and retries a failed delivery (against a real HTTP endpoint on 127.0.0.1)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from infra.localstack.eventarc import Relay, make_handler


class _Function:
    """A stand-in function endpoint: records what arrives, holds each request, fails on demand."""

    def __init__(self, hold_seconds: float, fail_first: int = 0) -> None:
        self.hold = hold_seconds
        self.fail_first = fail_first
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.open = 0
        self.most_open = 0
        self.lock = threading.Lock()


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def function() -> Iterator[tuple[_Function, str]]:
    fn = _Function(hold_seconds=1.0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with fn.lock:
                fn.open += 1
                fn.most_open = max(fn.most_open, fn.open)
                fail = fn.fail_first > 0
                fn.fail_first -= 1
            time.sleep(fn.hold)
            with fn.lock:
                fn.open -= 1
                fn.received.append((self.path, dict(self.headers.items()), body))
            self.send_response(500 if fail else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server, url = _serve(Handler)
    yield fn, url
    server.shutdown()


def _relay(target: str, concurrency: int) -> tuple[ThreadingHTTPServer, str]:
    relay = Relay(target, concurrency=concurrency, attempts=3, backoff_seconds=0.05)
    return _serve(make_handler(relay))


def test_relay_answers_at_once_and_delivers_events_unchanged_several_at_a_time(
    function: tuple[_Function, str],
) -> None:
    fn, url = function
    server, relay_url = _relay(url, concurrency=4)
    try:
        started = time.perf_counter()
        with httpx.Client() as http:
            for n in range(4):
                resp = http.post(
                    f"{relay_url}/functions/projects/demo/triggers/on-job-created",
                    headers={"ce-id": f"e{n}", "ce-type": "google.cloud.firestore.document.v1.created"},
                    content=f"event {n}".encode(),
                )
                assert resp.status_code == 200
        answered = time.perf_counter() - started
        deadline = time.monotonic() + 10
        while len(fn.received) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        server.shutdown()
    assert answered < 2 * fn.hold  # the emulator is not held while the function works (4 s if it were)
    assert fn.most_open >= 2  # delivered concurrently, not one after another
    assert sorted(body for *_, body in fn.received) == [f"event {n}".encode() for n in range(4)]
    path, headers, _ = fn.received[0]
    assert path == "/functions/projects/demo/triggers/on-job-created"
    assert headers["ce-type"] == "google.cloud.firestore.document.v1.created"


def test_relay_retries_a_delivery_the_function_failed(function: tuple[_Function, str]) -> None:
    fn, url = function
    fn.hold, fn.fail_first = 0.0, 2
    server, relay_url = _relay(url, concurrency=1)
    try:
        httpx.post(relay_url + "/", headers={"ce-id": "e1"}, content=b"once").raise_for_status()
        deadline = time.monotonic() + 10
        while len(fn.received) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # no fourth delivery after the success
    finally:
        server.shutdown()
    assert [body for *_, body in fn.received] == [b"once"] * 3  # 500, 500, then 200


def test_relay_delivers_a_non_ascii_document_path_byte_for_byte(function: tuple[_Function, str]) -> None:
    # The Firestore emulator sends the document path in ce-subject/ce-document as raw UTF-8: a job
    # created as jobs/jöb-1 must still reach the function (which rejects it with invalid_job_id),
    # not be dropped by the relay and left pending for the sweeper.
    fn, url = function
    fn.hold = 0.0
    server, relay_url = _relay(url, concurrency=1)
    port = server.server_address[1]
    subject = "documents/jobs/jöb-1".encode()
    request = (
        b"POST /functions/projects/demo/triggers/on-job-created HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"ce-id: e-utf8\r\nce-subject: " + subject + b"\r\nContent-Length: 4\r\n\r\nbody"
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(request)
            assert conn.recv(1024).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 10
        while not fn.received and time.monotonic() < deadline:
            time.sleep(0.02)
        status = httpx.get(relay_url + "/").text
    finally:
        server.shutdown()
    assert [body for *_, body in fn.received] == [b"body"]
    _, headers, _ = fn.received[0]
    assert headers["ce-subject"].encode("latin-1") == subject  # the same bytes, re-read as sent
    assert "dropped: 0" in status
