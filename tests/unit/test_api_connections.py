"""The API server's connection deadlines and cap (api/connections.py), on a real uvicorn server
with a small ASGI app, through raw sockets on 127.0.0.1, for both of uvicorn's HTTP
implementations."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
import uvicorn

from api.app import render_error
from api.connections import Implementation, Limits, protocol_class, raw_response
from api.errors import ApiError
from infra.localstack.stack import free_port

IMPLEMENTATIONS: list[Implementation] = ["h11", "httptools"]

#: how long a test waits for something the server should do (never the figure a test asserts)
PATIENCE = 30.0


class Echo:
    """Answers every request with the length of its body; remembers handlers that saw the caller
    go away while they waited for the body."""

    def __init__(self) -> None:
        self.gone: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone.append(scope["path"])
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        answer = json.dumps({"received": len(body)}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


@contextmanager
def served(
    implementation: Implementation, head: float = 1.0, body: float = 1.0, cap: int = 100
) -> Iterator[tuple[int, Echo]]:
    app = Echo()
    limits = Limits(
        head_seconds=head, body_seconds=body, max_connections=cap, retry_after=7, render=render_error
    )
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        log_level="warning",
        lifespan="off",
        http=protocol_class(limits, implementation),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + PATIENCE
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield config.port, app
    finally:
        server.should_exit = True
        thread.join(10)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` (reading and dropping whatever it answers first)."""
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response read from ``sock``: its status, headers (lower-case names) and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def get(port: int, path: str = "/ok") -> tuple[int, dict[str, str], bytes]:
    with connect(port) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return answer(sock)


def post_head(path: str, length: int) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_idle_and_slow_head_connections_are_closed_while_others_are_answered(
    implementation: Implementation,
) -> None:
    with served(implementation) as (port, _):
        idle = [connect(port) for _ in range(5)]
        slow = [connect(port) for _ in range(5)]
        stop = threading.Event()

        def trickle() -> None:
            # A head a byte at a time, never finished: each byte would reset uvicorn's own timer.
            for byte in b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10_000:
                if stop.wait(0.1):
                    return
                for sock in slow:
                    with suppress(OSError):
                        sock.send(bytes([byte]))

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            status, _, body = get(port)
            assert (status, json.loads(body)) == (200, {"received": 0})
            assert all(closed_by_server(sock) for sock in idle), "an idle connection stayed open"
            assert all(closed_by_server(sock) for sock in slow), "a slow head kept its connection"
        finally:
            stop.set()
            for sock in idle + slow:
                sock.close()
        assert get(port)[0] == 200


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_the_next_head_is_due_after_a_response(implementation: Implementation) -> None:
    with served(implementation) as (port, _), connect(port) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(sock)[0] == 200
        # The same connection answers a second request sent at once ...
        sock.sendall(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(sock)[0] == 200
        # ... but not a third one trickled in: uvicorn's keep-alive timer restarts on every byte.
        sock.settimeout(0.3)
        gone = False
        for byte in b"GET /third HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200:
            try:
                sock.send(bytes([byte]))
                if sock.recv(1) == b"":
                    gone = True
                    break
            except TimeoutError:
                continue
            except OSError:
                gone = True
                break
        assert gone, "a head sent a byte at a time kept its connection open"


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_late_body_is_answered_408_and_frees_its_handler(implementation: Implementation) -> None:
    with served(implementation) as (port, app), connect(port) as sock:
        sock.sendall(post_head("/v1/jobs", 100) + b"{")
        status, headers, body = answer(sock)
        assert status == 408
        problem = json.loads(body)
        assert problem["code"] == "request_timeout" and "body" in problem["message"]
        assert headers["connection"] == "close"
        assert closed_by_server(sock)
        deadline = time.monotonic() + PATIENCE
        while "/v1/jobs" not in app.gone:
            assert time.monotonic() < deadline, "the handler kept waiting for the body"
            time.sleep(0.02)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_body_that_arrives_in_time_is_answered(implementation: Implementation) -> None:
    with served(implementation, body=PATIENCE) as (port, _), connect(port) as sock:
        sock.sendall(post_head("/upload", 5))
        for byte in b"hello":
            time.sleep(0.05)
            sock.sendall(bytes([byte]))
        status, _, body = answer(sock)
        assert (status, json.loads(body)) == (200, {"received": 5})
        # keep-alive still works, and the body's timer does not cut the connection afterwards
        sock.sendall(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(sock)[0] == 200


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_past_the_connection_cap_a_request_gets_503_with_retry_after(implementation: Implementation) -> None:
    with served(implementation, head=PATIENCE, cap=4) as (port, _):
        held = [connect(port) for _ in range(4)]
        try:
            time.sleep(0.2)  # (accepted)
            status, headers, body = get(port)
            assert status == 503
            assert headers["retry-after"] == "7" and headers["connection"] == "close"
            assert json.loads(body)["code"] == "overloaded"
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + PATIENCE
        while get(port)[0] != 200:
            assert time.monotonic() < deadline, "the cap stayed full after the connections closed"
            time.sleep(0.05)


def test_the_openai_routes_get_their_own_error_shape() -> None:
    limits = Limits(head_seconds=1, body_seconds=2.5, max_connections=1, retry_after=3, render=render_error)
    data = raw_response(limits.late_body("/v1/audio/speech"), [(b"server", b"test")])
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"server: test" in head
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert b"2.5 s" in body
    plain = json.loads(limits.late_body("/v1/jobs").body)
    assert plain["code"] == "request_timeout"
    assert ApiError("request_timeout", "x").status == 408
