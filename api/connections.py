"""Time and room a caller may hold on the API's server before it has sent a request.

uvicorn (0.54) bounds none of it: its keep-alive timer starts only after a first response and is
cancelled by any byte received, so a connection that never sends a request, a request head sent
a byte at a time, or a body sent a byte every few seconds holds its connection (and a handler)
for as long as the caller likes; and ``limit_concurrency`` answers a plain-text 503 without
``Retry-After``. The HTTP protocol classes here add, to uvicorn's own h11 and httptools ones:

* a **head deadline**: the request line and headers must arrive within ``API_HEAD_SECONDS`` of
  the connection's start or of the previous response, else the connection is closed (an idle one
  too);
* a **body deadline**: the body must arrive within ``API_BODY_SECONDS`` of the head, else the
  request is answered ``408 request_timeout`` when no response has started yet, the handler
  waiting for the body sees the caller go away, and the connection is closed;
* a **connection cap**: a request that arrives while the process holds more than
  ``API_MAX_CONNECTIONS`` connections (or requests in flight) is answered ``503 overloaded`` with
  ``Retry-After`` and its connection closed, before the application sees it.

They hook uvicorn only where both implementations share it: ``data_received`` (a new request
cycle means a head arrived), ``on_response_complete``, ``connection_lost`` and ``self.app``.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal

from starlette.responses import Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from api.errors import ApiError
from infra.settings import Settings

#: how an error is answered on a path (api.app.render_error)
Render = Callable[[str, ApiError], Response]

#: the HTTP implementations uvicorn offers that these limits support
Implementation = Literal["auto", "h11", "httptools"]

#: after a 408 is written, how long its connection may take to flush before it is cut
_FLUSH_SECONDS = 5.0


@dataclass(frozen=True)
class Limits:
    head_seconds: float
    body_seconds: float
    max_connections: int
    retry_after: int
    render: Render

    @classmethod
    def of(cls, settings: Settings, render: Render) -> Limits:
        return cls(
            head_seconds=settings.api_head_seconds,
            body_seconds=settings.api_body_seconds,
            max_connections=settings.api_max_connections,
            retry_after=settings.api_busy_retry_seconds,
            render=render,
        )

    def overloaded(self, path: str) -> Response:
        """The answer past the connection cap; the connection closes after it."""
        response = self.render(
            path,
            ApiError(
                "overloaded",
                f"this API instance has {self.max_connections} connections open, its limit; try "
                f"again in {self.retry_after} s",
                status=503,
                retry_after=self.retry_after,
            ),
        )
        response.headers["connection"] = "close"
        return response

    def late_body(self, path: str) -> Response:
        response = self.render(
            path,
            ApiError(
                "request_timeout",
                f"the request body did not arrive within {self.body_seconds:g} s of its headers",
                status=408,
            ),
        )
        response.headers["connection"] = "close"
        return response


def raw_response(response: Response, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """``response`` (a complete, non-streaming one) as the bytes of an HTTP/1.1 answer."""
    status = response.status_code
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    lines = [f"HTTP/1.1 {status} {phrase}".encode("latin-1")]
    lines += [name + b": " + value for name, value in [*default_headers, *response.raw_headers]]
    return b"\r\n".join(lines) + b"\r\n\r\n" + bytes(response.body)


class Watch:
    """The deadlines and the cap of one connection (``protocol`` is uvicorn's, h11 or httptools)."""

    def __init__(self, protocol: Any, limits: Limits) -> None:
        self.protocol = protocol
        self.limits = limits
        self.app = protocol.app
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.seen: object = None  # the request cycle whose head was last seen

    @property
    def transport(self) -> asyncio.Transport:
        transport: asyncio.Transport = self.protocol.transport
        return transport

    # -- the protocol's events ----------------------------------------------------------------

    def connected(self) -> None:
        self._arm_head()

    def received(self) -> None:
        """After the protocol parsed what arrived: a new request cycle means a new head."""
        cycle = self.protocol.cycle
        if cycle is not None and cycle is not self.seen:
            self.seen = cycle
            self._cancel("head_timer")
            self._cancel("body_timer")
            if cycle.more_body and not cycle.response_complete:
                self.body_timer = self.protocol.loop.call_later(
                    self.limits.body_seconds, self._body_late, cycle
                )
        if self.body_timer is not None and (cycle is None or not cycle.more_body):
            self._cancel("body_timer")

    def responded(self) -> None:
        """After a response went out: the next head is due, unless one has arrived already."""
        self.received()
        cycle = self.protocol.cycle
        if self.transport.is_closing() or (cycle is not None and not cycle.response_complete):
            return
        self._arm_head()

    def lost(self) -> None:
        self._cancel("head_timer")
        self._cancel("body_timer")

    # -- the cap --------------------------------------------------------------------------------

    async def admit(self, scope: Any, receive: Any, send: Any) -> None:
        """The application, or ``503 overloaded`` past the cap (counted as uvicorn counts its
        ``limit_concurrency``: open connections, or requests in flight, this one included)."""
        busy = max(len(self.protocol.connections), len(self.protocol.tasks))
        if busy > self.limits.max_connections:
            await self.limits.overloaded(scope.get("path", ""))(scope, receive, send)
            return
        await self.app(scope, receive, send)

    # -- the deadlines --------------------------------------------------------------------------

    def _arm_head(self) -> None:
        self._cancel("head_timer")
        self.head_timer = self.protocol.loop.call_later(self.limits.head_seconds, self._head_late)

    def _cancel(self, name: Literal["head_timer", "body_timer"]) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def _head_late(self) -> None:
        self.head_timer = None
        cycle = self.protocol.cycle
        if cycle is not None and not cycle.response_complete:
            return  # a request is being answered: its own deadline is the body's
        # abort, not close: a caller who reads nothing must not keep it open through its buffer
        self.transport.abort()

    def _body_late(self, cycle: Any) -> None:
        self.body_timer = None
        if not cycle.more_body or cycle.disconnected or self.transport.is_closing():
            return
        if cycle.response_started:
            self.transport.abort()
            return
        answer = raw_response(
            self.limits.late_body(cycle.scope.get("path", "")),
            self.protocol.server_state.default_headers,
        )
        # The handler waiting for the body sees the caller go away; what it sends is dropped.
        cycle.keep_alive = False
        cycle.disconnected = True
        cycle.message_event.set()
        self.transport.write(answer)
        self.transport.close()
        self.protocol.loop.call_later(_FLUSH_SECONDS, self.transport.abort)


if TYPE_CHECKING:
    _Protocol = H11Protocol  # what both of uvicorn's HTTP protocols offer
else:
    _Protocol = object


class _Watched(_Protocol):
    """The hooks both of uvicorn's HTTP protocols have, told to a :class:`Watch`: mixed in before
    either (``protocol_class``), so each ``super()`` call is that protocol's own."""

    limits: Limits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watch = Watch(self, self.limits)
        self.app = self.watch.admit

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.watch.connected()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.watch.received()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.watch.responded()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.watch.lost()


def protocol_class(limits: Limits, implementation: Implementation = "auto") -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (``implementation``; ``auto`` picks httptools when it is installed,
    as uvicorn does) with ``limits``: pass it as ``http=`` to ``uvicorn.Config`` or ``uvicorn.run``."""
    if implementation == "auto":
        implementation = "httptools" if importlib.util.find_spec("httptools") else "h11"
    base: type[asyncio.Protocol] = H11Protocol
    if implementation == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    return type(f"Watched{base.__name__}", (_Watched, base), {"limits": limits})


def server_options(
    settings: Settings, render: Render, implementation: Implementation = "auto"
) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.Config`` / ``uvicorn.run`` that bound connections."""
    return {"http": protocol_class(Limits.of(settings, render), implementation)}
