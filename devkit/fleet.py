"""A fleet of GPU service instances on one local stack, as Cloud Run runs many behind one URL.

* :class:`Front`: a least-connections HTTP front on the stack's GPU service port, standing in for
  Cloud Run's load balancer: each push goes to the live instance with the fewest requests in
  flight; an instance that cannot be reached (killed) is skipped, and a push that found none
  gets 503, which Pub/Sub redelivers.
* :class:`FleetStack`: the local stack whose GPU service is that front and ``n`` instance
  processes, each started with ``python -m devkit.fleet serve`` (the service itself, with a count
  of its Firestore calls); instances can be added, killed and the functions restarted mid-run.
* The Firestore count: the service's Firestore client library calls wrapped at the RPC layer
  (queries, document reads, commits), documents read counted as Firestore bills them (a query
  that returns nothing still costs one read), written every half second to
  ``<state>/counts/<pid>.json`` so a SIGKILLed instance loses at most half a second of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from infra.localstack.stack import REPO, LocalStack, StackConfig, free_port
from infra.topology import Topology

COUNTS_DIR_ENV = "FLEET_COUNTS_DIR"

# -- counting the Firestore calls of one process ------------------------------------------------

_counts: Counter[str] = Counter()
_counts_lock = threading.Lock()


def _add(**amounts: int) -> None:
    with _counts_lock:
        _counts.update(amounts)


def _counted_stream(responses: Iterable[Any], kind: str) -> Iterator[Any]:
    documents = 0
    try:
        for response in responses:
            pb = getattr(response, "_pb", response)
            fields = ("document",) if kind == "query" else ("found", "missing")
            documents += any(pb.HasField(f) for f in fields)
            yield response
    finally:
        # Firestore bills a query that matched nothing as one read.
        _add(reads=max(documents, 1 if kind == "query" else 0))


def counts() -> Counter[str]:
    """This process's Firestore calls so far: ``queries``, ``gets``, ``reads``, ``commits``, ``writes``."""
    with _counts_lock:
        return Counter(_counts)


def install_firestore_counter() -> Callable[[], None]:
    """Wrap the Firestore client library's RPCs in this process so that they are counted;
    returns what puts the library back as it was."""
    from google.cloud.firestore_v1.services.firestore.client import FirestoreClient

    run_query = FirestoreClient.run_query
    batch_get = FirestoreClient.batch_get_documents
    commit = FirestoreClient.commit

    def counted_run_query(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        _add(queries=1)
        return _counted_stream(run_query(self, *args, **kwargs), "query")

    def counted_batch_get(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        _add(gets=1)
        return _counted_stream(batch_get(self, *args, **kwargs), "get")

    def counted_commit(self: Any, *args: Any, **kwargs: Any) -> Any:
        request = kwargs.get("request")
        writes = request.get("writes", []) if isinstance(request, Mapping) else getattr(request, "writes", [])
        _add(commits=1, writes=len(writes or []))
        return commit(self, *args, **kwargs)

    FirestoreClient.run_query = counted_run_query  # type: ignore[method-assign]
    FirestoreClient.batch_get_documents = counted_batch_get  # type: ignore[method-assign]
    FirestoreClient.commit = counted_commit  # type: ignore[method-assign]

    def restore() -> None:
        FirestoreClient.run_query = run_query  # type: ignore[method-assign]
        FirestoreClient.batch_get_documents = batch_get  # type: ignore[method-assign]
        FirestoreClient.commit = commit  # type: ignore[method-assign]

    return restore


def _write_counts_forever(folder: Path, period: float = 0.5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}.json"
    while True:
        with _counts_lock:
            body = json.dumps(dict(_counts))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(body)
        tmp.replace(path)
        time.sleep(period)


def serve() -> None:
    """The GPU service's own entry point, with its Firestore calls counted."""
    install_firestore_counter()
    folder = os.environ.get(COUNTS_DIR_ENV)
    if folder:
        threading.Thread(target=_write_counts_forever, args=(Path(folder),), daemon=True).start()
    from gpu_service.__main__ import main

    main()


def read_counts(folder: Path, pids: Iterable[int] | None = None) -> Counter[str]:
    """The counts of the processes ``pids`` (every process that wrote one when ``None``)."""
    total: Counter[str] = Counter()
    wanted = None if pids is None else {str(p) for p in pids}
    for path in folder.glob("*.json"):
        if wanted is not None and path.stem not in wanted:
            continue
        with contextlib.suppress(ValueError, OSError):
            total.update(json.loads(path.read_text()))
    return total


# -- the front ----------------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    port: int
    in_flight: int = 0
    live: bool = True
    served: int = 0


@dataclass
class Front:
    """Least-connections HTTP front on 127.0.0.1 for the GPU service instances."""

    port: int
    backends: list[Backend] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def add(self, backend: Backend) -> None:
        with self._lock:
            self.backends.append(backend)

    def remove(self, name: str) -> None:
        with self._lock:
            for b in self.backends:
                if b.name == name:
                    b.live = False

    def _pick(self, tried: set[str]) -> Backend | None:
        with self._lock:
            live = [b for b in self.backends if b.live and b.name not in tried]
            if not live:
                return None
            chosen = min(live, key=lambda b: b.in_flight)
            chosen.in_flight += 1
            return chosen

    def _done(self, backend: Backend) -> None:
        with self._lock:
            backend.in_flight -= 1
            backend.served += 1

    def forward(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        tried: set[str] = set()
        while True:
            backend = self._pick(tried)
            if backend is None:
                return 503, b'{"outcome": "busy", "detail": "no instance"}'
            tried.add(backend.name)
            try:
                resp = httpx.request(
                    method,
                    f"http://127.0.0.1:{backend.port}{path}",
                    content=body,
                    headers={
                        k: v for k, v in headers.items() if k.lower() in ("content-type", "authorization")
                    },
                    timeout=600,
                )
                return resp.status_code, resp.content
            except httpx.TransportError:
                continue  # not reachable (killed, or not up yet): the next instance
            finally:
                self._done(backend)

    def start(self) -> None:
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
                status, content = front.forward(self.command, self.path, body, dict(self.headers))
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _relay

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # The emulator drops kept-alive connections it no longer needs: not an error.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="front", daemon=True
        ).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


# -- the stack ----------------------------------------------------------------------------------


def _healthz(port: int) -> dict[str, Any] | None:
    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except httpx.HTTPError:
        return None
    body: dict[str, Any] = resp.json()
    return body if resp.status_code == 200 else None


class FleetStack(LocalStack):
    """The local stack with its GPU service as a front over ``instances`` service processes."""

    def __init__(self, config: StackConfig, topology: Topology | None = None, *, instances: int = 1) -> None:
        super().__init__(config, topology)
        self.front = Front(self.ports["gpu"])
        self.counts_dir = config.state_dir / "counts"
        self.initial_instances = instances
        self.instance_pids: dict[str, int] = {}
        self._serial = 0

    def __enter__(self) -> FleetStack:
        self.start()
        return self

    def _spawn_gpu_service(self, extra_env: Mapping[str, str] | None = None) -> None:
        if self.front._server is None:
            self.front.start()
        for _ in range(self.initial_instances):
            self.spawn_instance(extra_env)

    def spawn_instance(self, extra_env: Mapping[str, str] | None = None) -> str:
        """Start one more instance (not yet taking pushes until it is ready); returns its name."""
        name = f"gpu-{self._serial}"
        self._serial += 1
        port = free_port()
        env = {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WORKER_ID": name,
            COUNTS_DIR_ENV: str(self.counts_dir),
            **(extra_env or {}),
        }
        self._spawn(name, [sys.executable, "-m", "devkit.fleet", "serve"], env)
        pid = self.pid(name)
        assert pid is not None
        self.instance_pids[name] = pid
        self.front.add(Backend(name, port))
        return name

    def add_instance(self, timeout: float = 180) -> tuple[str, float]:
        """Start an instance and wait until it is ready: its name and its cold start (seconds)."""
        t0 = time.perf_counter()
        name = self.spawn_instance()
        self._wait(name, lambda: self._instance_ready(name), timeout)
        return name, time.perf_counter() - t0

    def _instance_ready(self, name: str) -> bool:
        backend = next(b for b in self.front.backends if b.name == name)
        return _healthz(backend.port) is not None

    def _gpu_ready(self) -> bool:
        live = [b for b in self.front.backends if b.live]
        return bool(live) and all(_healthz(b.port) is not None for b in live)

    def live_instances(self) -> list[str]:
        return [b.name for b in self.front.backends if b.live]

    def instance_health(self, name: str) -> dict[str, Any] | None:
        backend = next(b for b in self.front.backends if b.name == name)
        return _healthz(backend.port)

    def kill_instance(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        self.front.remove(name)
        self.kill(name, sig)

    def restart_function(self, name: str) -> float:
        """SIGKILL one function's process and start it again; seconds until it listens."""
        t0 = time.perf_counter()
        self.kill(name, signal.SIGKILL)
        fn = self.topology.functions[name]
        port = self.ports[f"fn:{name}"]
        argv = [
            sys.executable, "-m", "functions_framework",
            "--source", str(REPO / "functions/main.py"),
            "--target", fn.target,
            "--signature-type", "cloudevent",
            "--host", "127.0.0.1",
            "--port", str(port),
        ]  # fmt: skip
        self._spawn(name, argv, {})
        self._wait(name, lambda: _answers(port), 60)
        return time.perf_counter() - t0

    def stop(self) -> None:
        super().stop()
        self.front.stop()


def _answers(port: int) -> bool:
    """Whether an HTTP server answers on ``port`` (any status). An open port is not enough: a
    connect to a free port in the ephemeral range can connect the socket to itself."""
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
    except httpx.HTTPError:
        return False
    return True


def wait_until(predicate: Callable[[], bool], timeout: float, period: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        raise SystemExit("usage: python -m devkit.fleet serve")
