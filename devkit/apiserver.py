"""The API app with its own settings, served on 127.0.0.1 in the test process (the stack's
emulators): for tests that need tighter limits than the stack's API has."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from api.__main__ import build
from api.app import create_app, render_error
from api.connections import Implementation, server_options
from api.service import Api
from infra.localstack.stack import free_port
from infra.settings import Settings


@contextmanager
def api_server(
    settings: Settings, send_buffer_bytes: int | None = None, http: Implementation = "auto"
) -> Iterator[tuple[str, Api]]:
    """The URL of the served API, and its :class:`Api` (to look at its gates and listeners).

    ``send_buffer_bytes`` sets the kernel's send buffer of every connection (``SO_SNDBUF``; it is
    otherwise tuned up to megabytes on loopback): with a caller who reads nothing, the server's
    writes wait after that much instead of after megabytes. ``http`` picks uvicorn's HTTP
    implementation (``auto``: httptools when installed, as in production).
    """
    api = build(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(api),
            host="127.0.0.1",
            port=free_port(),
            log_level="warning",
            **server_options(settings, render_error, http),
        )
    )
    sockets: list[socket.socket] = []
    if send_buffer_bytes is not None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # (the accepted connections inherit it)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
        listener.bind(("127.0.0.1", 0))
        server.config.port = listener.getsockname()[1]
        sockets.append(listener)
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets or None}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}", api
    finally:
        server.should_exit = True
        thread.join(10)
        api.verifier.close()
