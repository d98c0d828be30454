"""A job followed as Server-Sent Events, for clients without the Firebase SDK.

Each change of status or progress is one ``event: job`` whose data is the job (as ``GET`` gives
it); the stream ends after the event that carries a final status. Comment lines keep an idle
stream open through proxies. The source is a Firestore listener on the job document, the same
one the SDK gives apps, so the first event is the job as it is now.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from api.errors import ApiError
from api.models import Job
from api.service import Api
from api.watch import Follower

#: fields whose change is worth an event (updatedAt, leases and heartbeats alone are not)
_SHOWN = ("status", "progress", "error", "outputs", "cancelRequested")


def _frame(event: str, data: str, event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n"


async def job_events(
    api: Api,
    job_id: str,
    follower: Follower,
    disconnected: Callable[[], Awaitable[bool]],
    recheck: Callable[[], Awaitable[None]],
    close: Callable[[], Awaitable[None]],
) -> AsyncIterator[str]:
    """Yield SSE frames until the job is final, the client goes away (``await disconnected()``)
    or the caller's token stops being valid (``await recheck()`` raises :class:`ApiError`, asked
    every ``API_STREAM_RECHECK_SECONDS``: expired, revoked, user disabled), which ends the stream
    with an ``error`` event ``{code, message}``. ``close`` leaves the job's listener and frees
    the stream's place."""
    loop = asyncio.get_running_loop()
    keepalive = api.settings.sse_keepalive_seconds
    every = api.settings.api_stream_recheck_seconds
    next_check = loop.time() + every
    last: str | None = None
    sent = 0
    try:
        yield "retry: 2000\n\n"
        while True:
            if loop.time() >= next_check:
                try:
                    await recheck()
                except ApiError as exc:
                    error = {"code": exc.code, "message": exc.message}
                    yield _frame("error", json.dumps(error), sent + 1)
                    return
                next_check = loop.time() + every
            wait = min(keepalive, max(next_check - loop.time(), 0.0))
            doc = await follower.next(wait)
            if doc is None:
                if await disconnected():
                    return
                if loop.time() < next_check:
                    yield ": keep-alive\n\n"
                continue
            job = Job.of(job_id, doc)
            body = job.model_dump(mode="json", by_alias=True, exclude_none=True)
            shown = json.dumps({k: body.get(k) for k in _SHOWN}, sort_keys=True)
            if shown == last:
                continue
            last = shown
            sent += 1
            yield _frame("job", json.dumps(body), sent)
            if job.status.is_final:
                yield _frame("end", json.dumps({"id": job_id, "status": job.status.value}), sent + 1)
                return
    finally:
        await close()
