"""The webhook sender's bound on a whole attempt, against raw-socket endpoints on 127.0.0.1, and
the dispatcher's settings for hostile endpoints (its lanes, its deadline against Terraform's)."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from functions.notify import WebhookSender, lane_threads
from infra.notify_targets import Endpoint, Secret, new_secret
from infra.settings import Settings

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def local(no_settings_env: None) -> Settings:
    return Settings(environment="local", notify_allow_loopback=True, notify_timeout_seconds=1)


def _endpoint(port: int) -> Endpoint:
    return Endpoint(
        url=f"http://127.0.0.1:{port}/hook", secrets=[Secret(secret=new_secret())], created_at=NOW
    )


@contextmanager
def _serve_once(answer: Callable[[socket.socket], None]) -> Iterator[int]:
    """A one-connection endpoint: reads the request head, then ``answer`` writes to the socket."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096)
                with suppress(OSError):  # the sender hung up
                    answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    thread.join(10)


def _dribble(conn: socket.socket) -> None:
    for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n":
        conn.sendall(bytes([byte]))
        time.sleep(0.2)


def _continues(conn: socket.socket) -> None:
    for _ in range(100):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        time.sleep(0.05)


def _huge_head(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * 64 * 1024)
    time.sleep(2)


def _not_http(conn: socket.socket) -> None:
    conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")


def _big_body(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 204 No Content\r\ncontent-length: 100000000\r\n\r\n")
    for _ in range(50):
        conn.sendall(b"x" * 65536)
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("answer", "status", "timed_out"),
    [
        (_dribble, "timeout: no answer within 1 s", True),  # each byte well within the timeout
        (_continues, "timeout: no answer within 1 s", True),  # interim answers, never a final one
        (_huge_head, "a malformed answer: an answer head over 16 KiB", False),
        (_not_http, "a malformed answer: the answer is not HTTP/1.x", False),
        (_big_body, "HTTP 204", False),  # the status is the outcome: the body is never read
    ],
)
def test_an_attempt_is_bounded_as_a_whole_and_reads_no_more_than_a_head(
    local: Settings, answer: Callable[[socket.socket], None], status: str, timed_out: bool
) -> None:
    with _serve_once(answer) as port:
        outcome = WebhookSender(local).send(_endpoint(port), "evt_1", b"{}", NOW)
    assert (outcome.status, outcome.timed_out) == (status, timed_out)
    assert outcome.delivered is (status == "HTTP 204") and not outcome.permanent


def test_a_closed_port_is_a_failed_connection_not_a_timeout(local: Settings) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    outcome = WebhookSender(local).send(_endpoint(port), "evt_1", b"{}", NOW)
    assert outcome.status == "connection failed: ConnectionRefusedError" and not outcome.timed_out


def test_failing_owners_get_a_quarter_of_the_threads_and_first_attempts_the_rest() -> None:
    assert lane_threads(8) == (6, 2)
    assert lane_threads(2) == (1, 1)
    assert lane_threads(1) == (1, 1)
    assert lane_threads(64) == (48, 16)


def test_the_deadline_is_not_below_the_run(no_settings_env: None) -> None:
    with pytest.raises(ValueError, match="NOTIFY_DEADLINE_SECONDS"):
        Settings(notify_run_seconds=50, notify_deadline_seconds=45)


def test_the_default_deadline_fits_the_functions_timeout_and_schedule(no_settings_env: None) -> None:
    """A tick's last attempt starts by NOTIFY_DEADLINE_SECONDS and takes NOTIFY_TIMEOUT_SECONDS at
    most, plus its writes: within the function's timeout and before the next minute's tick."""
    settings = Settings()
    variables = (REPO / "terraform" / "variables.tf").read_text()
    block = variables[variables.index('variable "functions_config"') :]
    timeout = int(re.search(r"timeout_seconds\s*=\s*optional\(number,\s*(\d+)\)", block).group(1))  # type: ignore[union-attr]
    topology = yaml.safe_load((REPO / "infra" / "topology.yaml").read_text())
    assert topology["schedules"]["notify"]["schedule"] == "* * * * *"  # every minute
    writes = 5.0
    last = settings.notify_deadline_seconds + settings.notify_timeout_seconds + writes
    assert last <= timeout and last <= 60
    assert settings.notify_run_seconds <= settings.notify_deadline_seconds


def test_a_tls_handshake_that_never_ends_is_bounded_by_the_same_deadline(local: Settings) -> None:
    # A TCP endpoint that accepts and then says nothing: the TLS handshake waits for its answer.
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        endpoint = Endpoint(
            url=f"https://127.0.0.1:{port}/hook", secrets=[Secret(secret=new_secret())], created_at=NOW
        )
        outcome = WebhookSender(local).send(endpoint, "evt_1", b"{}", NOW)
    assert outcome.status == "timeout: no answer within 1 s" and outcome.timed_out
