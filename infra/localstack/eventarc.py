"""``python -m infra.localstack.eventarc``: the local stack's Eventarc, between the Firestore
emulator and the job-created function.

The emulator POSTs its trigger events one at a time and waits for each answer, so a burst of jobs
was validated strictly one after another (measured: never two handlers at once, the whole burst's
pending time spent queueing for that one lane). In production Eventarc delivers events
concurrently to as many function instances as it takes. This relay answers the emulator at once
and forwards each event, unchanged (path, CloudEvent headers, body), to the function with up to
``--concurrency`` deliveries in flight. Like Eventarc with retries on, a delivery that fails (a
5xx, which is how a function asks for a retry, or no connection) is retried with backoff; the
emulator itself never retries, so this is no weaker than delivering directly.

Header values are forwarded as the bytes that arrived: the emulator sends the document path
(``ce-subject``, ``ce-document``) as raw UTF-8, so a job id such as ``jöb-1`` is not ASCII, and
re-encoding it as ASCII failed the delivery before it left (the job then waited for the sweeper).
An event that cannot be delivered at all is logged and counted (``GET /`` shows the count).
"""

from __future__ import annotations

import argparse
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

log = logging.getLogger("eventarc")

#: Headers that describe the hop, not the event.
HOP_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive"})


class Relay:
    def __init__(self, target: str, concurrency: int, attempts: int, backoff_seconds: float) -> None:
        self.target = target.rstrip("/")
        self.attempts = attempts
        self.backoff = backoff_seconds
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="deliver")
        self._http = httpx.Client(
            timeout=httpx.Timeout(600, connect=5),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self.in_flight = 0
        self.dropped = 0
        self._lock = threading.Lock()

    def accept(self, path: str, headers: dict[bytes, bytes], body: bytes) -> None:
        with self._lock:
            self.in_flight += 1
        self._pool.submit(self._deliver, path, headers, body)

    def _deliver(self, path: str, headers: dict[bytes, bytes], body: bytes) -> None:
        event = headers.get(b"ce-id", b"?").decode("latin-1")
        try:
            self._attempts(event, path, headers, body)
        except Exception:
            # Not the function's doing (no retry would change it): say so instead of losing it quietly.
            log.exception("event %s: could not be delivered; dropped", event)
            with self._lock:
                self.dropped += 1
        finally:
            with self._lock:
                self.in_flight -= 1

    def _attempts(self, event: str, path: str, headers: dict[bytes, bytes], body: bytes) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                resp = self._http.post(self.target + path, headers=headers, content=body)
                if resp.status_code < 500:
                    if resp.status_code >= 300:
                        log.warning(
                            "event %s: the function answered %s; not retried", event, resp.status_code
                        )
                    return
                why = f"HTTP {resp.status_code}"
            except httpx.TransportError as exc:
                why = type(exc).__name__
            if attempt < self.attempts:
                delay = self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                log.warning("event %s: delivery %d failed (%s); again in %.1f s", event, attempt, why, delay)
                time.sleep(delay)
        log.error("event %s: dropped after %d deliveries", event, self.attempts)
        with self._lock:
            self.dropped += 1


def make_handler(relay: Relay) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            # http.server decodes header bytes as latin-1: encoding back gives the bytes sent.
            headers = {
                k.encode("latin-1"): v.encode("latin-1")
                for k, v in self.headers.items()
                if k.lower() not in HOP_HEADERS
            }
            relay.accept(self.path, headers, body)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # readiness: the stack waits for an answer here
            text = f"in flight: {relay.in_flight}\ndropped: {relay.dropped}\n".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, format: str, *args: object) -> None:
            log.debug(format, *args)

    return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # a deep accept backlog: never refuse the emulator a connection
    daemon_threads = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True, help="the function, e.g. http://127.0.0.1:8092")
    parser.add_argument("--concurrency", type=int, default=8, help="deliveries in flight at once")
    parser.add_argument(
        "--attempts", type=int, default=6, help="deliveries of one event before it is dropped"
    )
    parser.add_argument("--backoff-seconds", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    relay = Relay(args.target, args.concurrency, args.attempts, args.backoff_seconds)
    server = _Server(("127.0.0.1", args.port), make_handler(relay))
    log.info("relaying to %s, %d at once", args.target, args.concurrency)
    server.serve_forever()


if __name__ == "__main__":
    main()
