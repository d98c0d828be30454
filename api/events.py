"""A job followed as Server-Sent Events, for clients without the Firebase SDK.

Each change of status, progress or live state is one ``event: job`` whose data is the job (as
``GET`` gives it, ``live`` included: the phase, and for a queued job its place in the queue and its
estimated start and end, computed again every ``LIVE_REFRESH_SECONDS``); new partial output (a
transcript's segments as they are decoded) is also one ``event: partial`` with only the new items.
The stream ends after the event that carries a final status. Comment lines keep an idle stream
open through proxies. The source is a Firestore listener on the job document, the same one the SDK
gives apps, so the first event is the job as it is now.

Every event's id names what the client has seen (``{partial count}.{digest of the job's shown
fields}``): a client that reconnects with ``Last-Event-ID`` (browsers' ``EventSource`` does it
itself) is not sent that job again, nor partial items it had, only what changed since.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.concurrency import run_in_threadpool

from api.errors import ApiError
from api.models import Job
from api.service import Api
from api.watch import Follower
from core.contract import JobDoc, JobStatus, PartialOutput

#: fields whose change is worth an event (updatedAt, leases and heartbeats alone are not)
_SHOWN = ("status", "progress", "error", "outputs", "cancelRequested", "live")
_LAST_ID = re.compile(r"\A(\d{1,9})\.([0-9a-f]{1,32})\Z")


def _frame(event: str, data: str, event_id: str | None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


def resume_point(last_event_id: str | None) -> tuple[int, str | None]:
    """``(partial items seen, digest of the job last seen)`` from a ``Last-Event-ID`` this stream
    gave; ``(0, None)`` for none, or one it did not give (the stream starts over)."""
    match = _LAST_ID.match((last_event_id or "").strip())
    if match is None:
        return 0, None
    return int(match.group(1)), match.group(2)


def _digest(body: dict[str, Any]) -> str:
    shown = json.dumps({k: body.get(k) for k in _SHOWN}, sort_keys=True, default=str)
    return hashlib.sha256(shown.encode()).hexdigest()[:16]


def _new_items(partial: PartialOutput | None, seen: int) -> tuple[list[dict[str, Any]], int]:
    """The partial items after the first ``seen`` (of those still listed), and the new count."""
    if partial is None:
        return [], seen
    if partial.count < seen:
        seen = 0  # a new attempt started over
    first = partial.count - len(partial.items)
    return partial.items[max(seen - first, 0) :], partial.count


async def job_events(
    api: Api,
    job_id: str,
    follower: Follower,
    disconnected: Callable[[], Awaitable[bool]],
    recheck: Callable[[], Awaitable[None]],
    close: Callable[[], Awaitable[None]],
    last_event_id: str | None = None,
) -> AsyncIterator[str]:
    """Yield SSE frames until the job is final, the client goes away (``await disconnected()``)
    or the caller's token stops being valid (``await recheck()`` raises :class:`ApiError`, asked
    every ``API_STREAM_RECHECK_SECONDS``: expired, revoked, user disabled), which ends the stream
    with an ``error`` event ``{code, message}``. ``close`` leaves the job's listener and frees
    the stream's place. ``last_event_id``: resume after that event (nothing seen is sent again)."""
    loop = asyncio.get_running_loop()
    s = api.settings
    keepalive = s.sse_keepalive_seconds
    every = s.api_stream_recheck_seconds
    next_check = loop.time() + every
    next_live = loop.time()
    seen, last = resume_point(last_event_id)
    doc: JobDoc | None = None
    try:
        yield "retry: 2000\n\n"
        while True:
            if loop.time() >= next_check:
                try:
                    await recheck()
                except ApiError as exc:
                    error = {"code": exc.code, "message": exc.message}
                    yield _frame("error", json.dumps(error), None)
                    return
                next_check = loop.time() + every
            refresh = doc is not None and doc.effective_status is JobStatus.QUEUED
            deadline = min(next_check, next_live) if refresh else next_check
            wait = min(keepalive, max(deadline - loop.time(), 0.0))
            changed = await follower.next(wait)
            if changed is None:
                if await disconnected():
                    return
                if not (refresh and loop.time() >= next_live):
                    if loop.time() < next_check:
                        yield ": keep-alive\n\n"
                    continue
            else:
                doc = changed
            assert doc is not None
            live = await run_in_threadpool(api.live.follow, job_id, doc)
            next_live = loop.time() + s.live_refresh_seconds
            job = Job.of(job_id, doc, live)
            body = job.model_dump(mode="json", by_alias=True, exclude_none=True)
            items, count = _new_items(doc.partial, seen)
            digest = _digest(body)
            event_id = f"{count}.{digest}"
            if digest != last:
                last = digest
                yield _frame("job", json.dumps(body), event_id)
            if items and count != seen:
                partial = {
                    "attempt": doc.partial.attempt if doc.partial else 0,
                    "count": count,
                    "items": items,
                }
                yield _frame("partial", json.dumps(partial), event_id)
            seen = count
            if job.status.is_final:
                yield _frame("end", json.dumps({"id": job_id, "status": job.status.value}), event_id)
                return
    finally:
        api.live.forget(job_id)
        await close()
