"""Local stand-ins for what the notification dispatcher calls: a webhook receiver that verifies
Standard Webhooks signatures, and an FCM v1 send endpoint (FCM has no emulator).

Both are plain threaded HTTP servers on 127.0.0.1 that record what arrived. The webhook receiver
answers each endpoint path from a script (``fail``, ``hang``, ``redirect``, then ``ok``) so tests
can make deliveries fail, time out or redirect. The FCM stand-in answers FCM v1's
``POST /v1/projects/{project}/messages:send`` as FCM does: ``{"name": ...}``, or, for a token
marked stale, 404 with the ``UNREGISTERED`` error detail firebase-admin turns into
``UnregisteredError``. Point firebase-admin at it with ``FCM_URL``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    webhook_id: str
    verified: bool
    body: dict[str, Any]
    answered: str


@dataclass
class WebhookReceiver:
    """Records every POST; ``secrets[path]`` verifies it, ``script[path]`` says how to answer."""

    secrets: dict[str, str] = field(default_factory=dict)
    script: dict[str, list[str]] = field(default_factory=dict)
    hang_seconds: float = 5.0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer_for(self, path: str) -> str:
        with self.lock:
            steps = self.script.get(path) or []
            return steps.pop(0) if steps else "ok"

    def for_path(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def verify(self, path: str, body: bytes, headers: dict[str, str]) -> bool:
        secret = self.secrets.get(path)
        if secret is None:
            return False
        try:
            Webhook(secret).verify(body, headers)
        except WebhookVerificationError:
            return False
        return True


@dataclass
class FcmReceiver:
    """FCM v1's send API: records each message; tokens in ``stale`` are answered UNREGISTERED."""

    stale: set[str] = field(default_factory=set)
    messages: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/projects/{{project}}/messages:send"

    def to(self, token: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.messages if m.get("message", {}).get("token") == token]


def _webhook_handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = receiver.answer_for(self.path)
            record = Received(
                path=self.path,
                webhook_id=headers.get("webhook-id", ""),
                verified=receiver.verify(self.path, body, headers),
                body=json.loads(body or b"{}"),
                answered=answer,
            )
            with receiver.lock:
                receiver.received.append(record)
            if answer == "hang":
                time.sleep(receiver.hang_seconds)
                return self._reply(200)
            if answer == "redirect":
                self.send_response(307)
                self.send_header("location", receiver.url("/redirected"))
                self.send_header("content-length", "0")
                self.end_headers()
                return None
            return self._reply(500 if answer == "fail" else 204)

        def _reply(self, status: int) -> None:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def _fcm_handler(receiver: FcmReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            data = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
            token = data.get("message", {}).get("token")
            if not self.path.endswith("/messages:send"):
                return self._json(
                    404, {"error": {"code": 404, "message": "no such method", "status": "NOT_FOUND"}}
                )
            if token in receiver.stale:
                detail = {
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": "UNREGISTERED",
                }
                error = {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}
                return self._json(404, {"error": {**error, "details": [detail]}})
            with receiver.lock:
                receiver.messages.append(data)
                name = f"projects/local/messages/{len(receiver.messages)}"
            return self._json(200, {"name": name})

        def _json(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def _serve(handler: type[BaseHTTPRequestHandler], port: int) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="receiver", daemon=True
    )
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def webhook_receiver(port: int = 0, hang_seconds: float = 5.0) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(hang_seconds=hang_seconds)
    with _serve(_webhook_handler(receiver), port) as bound:
        receiver.port = bound
        yield receiver


@contextmanager
def fcm_receiver(port: int = 0) -> Iterator[FcmReceiver]:
    receiver = FcmReceiver()
    with _serve(_fcm_handler(receiver), port) as bound:
        receiver.port = bound
        yield receiver
