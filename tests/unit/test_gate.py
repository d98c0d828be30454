"""The local stack's signed-URL gate, served on 127.0.0.1 and spoken to over raw sockets: its
errors are well-formed XML whatever the request said, it refuses before reading a body, and its
log lines carry no raw control characters."""

from __future__ import annotations

import logging
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from infra.localstack.gate import make_handler

ACCOUNT = "local-signer@demo-gpu-jobs.iam.gserviceaccount.com"
#: the request must be answered well before this: a gate that waits for the body never answers
READ_TIMEOUT_SECONDS = 20


@pytest.fixture(scope="module")
def gate() -> Iterator[tuple[str, int]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # The upstream is never reached: every request here is refused by the gate itself.
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), make_handler("http://127.0.0.1:9", key.public_key(), ACCOUNT)
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="gate", daemon=True
    )
    thread.start()
    yield "127.0.0.1", server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def exchange(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` (only what is given: a body may be promised and never sent), read the reply."""
    with socket.create_connection(address, timeout=READ_TIMEOUT_SECONDS) as conn:
        conn.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            assert chunk, "the gate closed the connection without answering"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def signed_looking_query(credential: str) -> str:
    from urllib.parse import quote

    return (
        "X-Goog-Algorithm=GOOG4-RSA-SHA256"
        f"&X-Goog-Credential={quote(credential, safe='')}"
        "&X-Goog-Date=20260101T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host&X-Goog-Signature=00"
    )


def test_request_text_in_an_error_is_escaped_so_the_error_stays_xml(gate: tuple[str, int]) -> None:
    credential = "<Code>Owned<Message>x@evil&co/20260101/auto/storage/goog4_request"
    query = signed_looking_query(credential)
    status, _, body = exchange(gate, f"GET /bucket/o?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 403
    error = ET.fromstring(body)
    assert [child.tag for child in error] == ["Code", "Message"]
    assert error.findtext("Code") == "AccessDenied"
    assert error.findtext("Message") == "<Code>Owned<Message>x@evil&co may not sign for this bucket"


def test_an_unsigned_upload_is_refused_before_its_body_is_read(gate: tuple[str, int]) -> None:
    # A gigabyte promised, not a byte sent: the refusal must come from the headers alone.
    request = b"PUT /bucket/uploads/u/big.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n"
    status, headers, body = exchange(gate, request)
    assert status == 400
    assert ET.fromstring(body).findtext("Code") == "AuthenticationRequired"
    assert headers.get("connection") == "close"  # the unread body cannot be taken for a next request


def test_a_malformed_content_length_is_a_clear_400(gate: tuple[str, int]) -> None:
    query = signed_looking_query(f"{ACCOUNT}/20260101/auto/storage/goog4_request")
    request = f"PUT /bucket/o?{query} HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".encode()
    status, _, body = exchange(gate, request)
    assert status == 400
    assert ET.fromstring(body).findtext("Code") == "InvalidArgument"
    assert "Content-Length" in (ET.fromstring(body).findtext("Message") or "")


def test_control_characters_in_a_request_are_escaped_in_the_log(
    gate: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gate"):
        exchange(gate, b"GET /bucket/\x1b[2J\x1b[1;1Hforged-line\x07 HTTP/1.1\r\nHost: x\r\n\r\n")
    lines = [r.getMessage() for r in caplog.records if r.name == "gate"]
    assert any("\\x1b[2J\\x1b[1;1Hforged-line\\x07" in line for line in lines), lines
    assert not any("\x1b" in line or "\x07" in line for line in lines)
