"""The local stand-in for Cloud Run's load balancer in front of several GPU service instances
(``devkit/fleet.py``): pushes spread over the instances, a dead one is skipped, none left is a 503
that Pub/Sub redelivers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from devkit.fleet import Backend, Front
from infra.localstack.stack import free_port


class _Instance:
    """An HTTP server that answers each POST with its own name, once ``release`` is set."""

    def __init__(self, name: str, release: threading.Event | None = None) -> None:
        instance = self
        self.name, self.hits = name, 0
        self.release = release or threading.Event()
        if release is None:
            self.release.set()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                instance.hits += 1
                instance.release.wait(30)
                body = instance.name.encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def front() -> Iterator[Front]:
    f = Front(free_port())
    f.start()
    yield f
    f.stop()


def push(front: Front) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{front.port}/push/flaky", content=b"{}", timeout=10)


def test_pushes_in_flight_go_to_the_instance_with_the_fewest(front: Front) -> None:
    release = threading.Event()  # all four overlap: none is answered before the last arrives
    a, b = _Instance("a", release), _Instance("b", release)
    front.add(Backend("a", a.port))
    front.add(Backend("b", b.port))
    try:
        threads = [threading.Thread(target=push, args=(front,)) for _ in range(4)]
        for arrived, t in enumerate(threads, start=1):
            t.start()
            # each arrives while the earlier ones are still being served
            deadline = time.monotonic() + 10
            while a.hits + b.hits < arrived:
                assert time.monotonic() < deadline, "a push did not reach an instance"
                time.sleep(0.01)
        release.set()
        for t in threads:
            t.join()
        assert (a.hits, b.hits) == (2, 2)
    finally:
        release.set()
        a.close()
        b.close()


def test_an_instance_that_cannot_be_reached_is_skipped_and_none_left_is_a_503(front: Front) -> None:
    alive = _Instance("alive")
    front.add(Backend("dead", free_port()))  # nothing listens there: a killed instance
    front.add(Backend("alive", alive.port))
    try:
        answers = [push(front) for _ in range(3)]
        assert [(r.status_code, r.text) for r in answers] == [(200, "alive")] * 3
    finally:
        alive.close()
    front.remove("alive")
    assert push(front).status_code == 503  # Pub/Sub redelivers a 503
