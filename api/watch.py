"""Following jobs without a thread per follower: one Firestore listener per followed job, shared.

Everything that waits for a job here (``?wait`` on a create, the event stream, the speech route)
follows it through :class:`JobWatches`: the first follower of a job opens a listener on its
document, the others join it (and are handed the job as last seen at once), the last one to leave
closes it. Followers wait on the event loop, not in worker threads, so a thousand waiting callers
hold no thread of the pool that every other request needs; how many listeners may be open at once
is capped (``API_MAX_LISTENERS``: past it ``503 overloaded`` with ``Retry-After``).

A listener's stream can end for good (Firestore cancels it: the client library gives up on a
``CANCELLED`` stream and its thread ends): a follower that hears nothing for a poll checks its
listener, and a dead one is opened again, whose first snapshot is the job as it is now.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from api.errors import ApiError
from core.contract import JobDoc, read_job

log = logging.getLogger(__name__)

#: how often a waiting request checks that its caller is still there
DISCONNECT_POLL_SECONDS = 1.0

#: opens a listener on a job document: ``(job_id, on_snapshot) -> watch`` (``.unsubscribe()``)
OpenListener = Callable[[str, Callable[[list[Any], Any, Any], None]], Any]


class Follower:
    """One waiting request's view of a followed job: the job at each change, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, mend: Callable[[], None] | None = None) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[JobDoc] = asyncio.Queue()
        self._mend = mend

    def push(self, job: JobDoc) -> None:
        """From any thread (Firestore calls back on its own)."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, job)

    async def next(self, timeout: float) -> JobDoc | None:
        """The next version of the job, or ``None`` after ``timeout`` seconds without one."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout=max(timeout, 0))
        except TimeoutError:
            if self._mend is not None:
                self._mend()  # nothing heard: the listener may have died
            return None


@dataclass(eq=False)
class _Listener:
    followers: set[Follower] = field(default_factory=set)
    latest: JobDoc | None = None
    handle: Any = None


class JobWatches:
    def __init__(self, open_listener: OpenListener, limit: int, retry_after: int) -> None:
        self._open_listener = open_listener
        self.limit = limit
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._listeners: dict[str, _Listener] = {}

    @property
    def open(self) -> int:
        """Listeners open now."""
        with self._lock:
            return len(self._listeners)

    @asynccontextmanager
    async def follow(self, job_id: str) -> AsyncIterator[Follower]:
        """Follow ``job_id`` for the duration of the block.

        Raises:
            ApiError: ``overloaded`` (503, with ``Retry-After``): as many jobs are followed as the
                instance allows, and this one is not among them.
        """
        follower = Follower(asyncio.get_running_loop(), lambda: self._mend(job_id))
        with self._lock:
            listener = self._listeners.get(job_id)
            opening = listener is None
            if listener is None:
                if len(self._listeners) >= self.limit:
                    raise ApiError(
                        "overloaded",
                        f"this API instance follows {self.limit} jobs, its limit; try again in "
                        f"{self.retry_after} s",
                        status=503,
                        retry_after=self.retry_after,
                    )
                listener = self._listeners[job_id] = _Listener()
            listener.followers.add(follower)
            if listener.latest is not None:
                follower.push(listener.latest)
        try:
            if opening:
                # Returns at once: the listener's stream is opened by its own background thread.
                listener.handle = self._open_listener(job_id, self._callback(listener))
            yield follower
        finally:
            with self._lock:
                listener.followers.discard(follower)
                last = not listener.followers and self._listeners.get(job_id) is listener
                if last:
                    del self._listeners[job_id]
            if last and listener.handle is not None:
                # Closing joins the listener's thread for up to a second: not on the event loop.
                asyncio.get_running_loop().run_in_executor(None, _close, listener.handle)

    def _mend(self, job_id: str) -> None:
        """Open the listener of ``job_id`` again if its stream has ended (``is_active`` false)."""
        with self._lock:
            listener = self._listeners.get(job_id)
            handle = listener.handle if listener is not None else None
            if listener is None or handle is None or getattr(handle, "is_active", True):
                return
            listener.handle = None  # one follower reopens it; the others find it being opened
        log.warning("job %s: its listener's stream ended; opening it again", job_id)
        try:
            fresh = self._open_listener(job_id, self._callback(listener))
        except Exception:
            log.warning("job %s: opening its listener again failed", job_id, exc_info=True)
            fresh = handle  # dead: the next quiet poll tries again
        with self._lock:
            listener.handle = fresh
            orphaned = self._listeners.get(job_id) is not listener  # its last follower left meanwhile
        if orphaned and fresh is not handle:
            _close(fresh)

    def _callback(self, listener: _Listener) -> Callable[[list[Any], Any, Any], None]:
        def on_snapshot(snaps: list[Any], _changes: Any, _read_time: Any) -> None:
            for snap in snaps:
                if not snap.exists:
                    continue
                try:
                    job = read_job(snap.to_dict() or {})
                except Exception:
                    log.exception("job %s: unreadable document", getattr(snap, "id", "?"))
                    continue
                with self._lock:
                    listener.latest = job
                    followers = list(listener.followers)
                for follower in followers:
                    follower.push(job)

        return on_snapshot


def _close(handle: Any) -> None:
    try:
        handle.unsubscribe()
    except Exception:
        log.warning("closing a job listener failed", exc_info=True)


async def wait_for_end(
    watches: JobWatches, job_id: str, seconds: float, disconnected: Callable[[], Awaitable[bool]]
) -> JobDoc | None:
    """Follow the job until it is final, ``seconds`` pass or the caller goes away (checked every
    :data:`DISCONNECT_POLL_SECONDS`); the job as last seen (``None``: not seen at all)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    latest: JobDoc | None = None
    async with watches.follow(job_id) as follower:
        while (left := deadline - loop.time()) > 0:
            job = await follower.next(min(left, DISCONNECT_POLL_SECONDS))
            if job is None:
                if await disconnected():
                    break
                continue
            latest = job
            if job.effective_status.is_final:
                break
    return latest
