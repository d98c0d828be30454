"""A job followed as Server-Sent Events, for clients without the Firebase SDK.

Each change of status or progress is one ``event: job`` whose data is the job (as ``GET`` gives
it); the stream ends after the event that carries a final status. Comment lines keep an idle
stream open through proxies. The source is a Firestore listener on the job document, the same
one the SDK gives apps, so the first event is the job as it is now.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from api.models import Job
from api.service import Api
from core.contract import read_job

#: fields whose change is worth an event (updatedAt, leases and heartbeats alone are not)
_SHOWN = ("status", "progress", "error", "outputs", "cancelRequested")


def _frame(event: str, data: str, event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n"


async def job_events(api: Api, job_id: str, disconnected: Any) -> AsyncIterator[str]:
    """Yield SSE frames until the job is final or the client goes away (``await disconnected()``)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Job] = asyncio.Queue()

    def on_snapshot(snaps: list[Any], _changes: Any, _read_time: Any) -> None:
        for snap in snaps:
            if snap.exists:
                job = Job.of(job_id, read_job(snap.to_dict() or {}))
                loop.call_soon_threadsafe(queue.put_nowait, job)

    watch = api.jobs().document(job_id).on_snapshot(on_snapshot)
    keepalive = api.settings.sse_keepalive_seconds
    last: str | None = None
    sent = 0
    try:
        yield "retry: 2000\n\n"
        while True:
            try:
                job = await asyncio.wait_for(queue.get(), timeout=keepalive)
            except TimeoutError:
                if await disconnected():
                    return
                yield ": keep-alive\n\n"
                continue
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
        watch.unsubscribe()  # type: ignore[no-untyped-call]
