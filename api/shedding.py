"""Load shedding at the edge of the API: what is refused before any work is done for it.

* :class:`BodyLimit` (ASGI): a body larger than ``API_MAX_BODY_BYTES`` is answered ``413`` before
  anything reads it: at once when ``Content-Length`` says so, and as soon as the count passes the
  limit for a body sent without one (chunked). Nothing past the limit is ever held in memory.
* :class:`AuthGate` (ASGI): every ``/v1/`` request's token is verified before its body is read
  or parsed; an anonymous request costs one header check.
* :class:`Gate`: how many requests of a kind (waits for a job, event streams) may be open at once,
  per user and in all; past the user's cap ``429 too_many_requests``, past the instance's
  ``503 overloaded``, both with ``Retry-After``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import APP_CHECK_HEADER, TokenVerifier, User
from api.errors import ApiError

#: how an error is answered on a path (the OpenAI-compatible routes have their own shape)
Render = Callable[[str, ApiError], Response]

#: paths whose callers must show a token (the schema, its docs and /healthz are public)
PROTECTED_PREFIX = "/v1/"


class Gate:
    """Counts open requests of one kind, per user and in all, and refuses those past the caps."""

    def __init__(self, what: str, per_user: int, overall: int, retry_after: int) -> None:
        self.what = what
        self.per_user = per_user
        self.overall = overall
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    def enter(self, uid: str) -> Callable[[], None]:
        """Take a place for ``uid``; returns the release (safe to call more than once).

        Raises:
            ApiError: ``too_many_requests`` (429) past the user's cap, ``overloaded`` (503) past
                the instance's; both with ``Retry-After``.
        """
        with self._lock:
            if self._open.total() >= self.overall:
                raise ApiError(
                    "overloaded",
                    f"this API instance has {self.overall} {self.what} open, its limit; try again "
                    f"in {self.retry_after} s",
                    status=503,
                    retry_after=self.retry_after,
                )
            if self._open[uid] >= self.per_user:
                raise ApiError(
                    "too_many_requests",
                    f"you have {self._open[uid]} {self.what} open; the limit is {self.per_user}: "
                    "close one, or try again later",
                    status=429,
                    retry_after=self.retry_after,
                )
            self._open[uid] += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                self._open[uid] -= 1
                if self._open[uid] <= 0:
                    del self._open[uid]

        return release

    @contextmanager
    def hold(self, uid: str) -> Iterator[None]:
        release = self.enter(uid)
        try:
            yield
        finally:
            release()

    def count(self, uid: str | None = None) -> int:
        with self._lock:
            return self._open.total() if uid is None else self._open[uid]


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, before the application reads them."""

    def __init__(self, app: ASGIApp, limit: int, render: Render) -> None:
        self.app = app
        self.limit = limit
        self.render = render

    def _refusal(self, path: str) -> Response:
        return self.render(
            path,
            ApiError(
                "too_large",
                f"the request body is larger than {self.limit} bytes, the limit of this API",
                status=413,
            ),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                bad = ApiError("invalid_request", "Content-Length is not a number", status=400)
                await self.render(path, bad)(scope, receive, send)
                return
            if int(declared) > self.limit:
                await self._refusal(path)(scope, receive, send)
                return
        seen = 0
        refused = False
        started = False

        async def counted_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # The application sees the client go away; the caller gets the 413.
                    refused = True
                    if not started:
                        await self._refusal(path)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 was the answer
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)


class AuthGate:
    """Verifies the caller's token before the application does any work for the request (its body
    is not read yet); the verified user is left in the request's state for :data:`Caller`."""

    def __init__(self, app: ASGIApp, verifier: Callable[[], TokenVerifier], render: Render) -> None:
        self.app = app
        self.verifier = verifier
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        authorization = _header(scope, b"authorization")
        app_check = _header(scope, APP_CHECK_HEADER.lower().encode())
        try:
            user = await run_in_threadpool(self.verifier().verify, authorization, app_check)
        except ApiError as exc:
            await self.render(path, exc)(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["user"] = user
        state["authorization"] = authorization
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1").strip()
    return None


#: declares the token in the OpenAPI document (the check itself is :class:`AuthGate`'s)
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="FirebaseIdToken",
    bearerFormat="JWT",
    description="the user's Firebase ID token (getIdToken() in the Firebase SDK)",
)


async def caller(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
) -> User:
    """The caller :class:`AuthGate` verified (verified here when the gate is not installed)."""
    user = getattr(request.state, "user", None)
    if isinstance(user, User):
        return user
    verifier: TokenVerifier = request.app.state.api.verifier
    return await run_in_threadpool(
        verifier.verify, request.headers.get("authorization"), request.headers.get(APP_CHECK_HEADER)
    )


#: a route's verified caller, as a parameter: ``user: Caller``
Caller = Annotated[User, Depends(caller)]
