"""Streamed answers of ``POST /v1/audio/speech``: the audio as its chunks are spoken.

A streaming request (the ``openai`` client's ``with_streaming_response``, which sends
``X-Stainless-Raw-Response: stream``, or ``stream_format: "audio"``) for pcm, wav, mp3 or aac makes
a ``tts`` job with ``stream: true``. The worker publishes each spoken chunk as its own object and
records it in the job's ``partial`` items (``pipelines/tts/stream.py``); the answer follows the
job through the shared per-job listener and writes each chunk's bytes as it appears, then the
chunks the job's last writes did not list (by their index, up to ``outputs.chunks``).

Until the first byte the answer is the usual one: an OpenAI-shaped error for a job that fails, the
``504`` at ``OPENAI_SPEECH_TIMEOUT_SECONDS``, and the whole file for a job that ends before any
chunk was seen. After it, a failure (the job fails or is cancelled, a retry starts over on another
attempt, the wait runs out) ends the stream without its end: the connection is closed, so the
caller sees a broken body rather than a short file that looks whole. The request holds a place of
the waiting requests' caps (``API_MAX_WAITS_PER_USER``, ``API_MAX_WAITS``) and a job listener
(``API_MAX_LISTENERS``) from before the job is made until its last byte is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from api.auth import User
from api.models import JobCreate
from api.service import Api, create_job
from api.watch import DISCONNECT_POLL_SECONDS
from core.contract import JobDoc, JobStatus
from core.errors import PermanentError

log = logging.getLogger(__name__)

#: the response formats whose chunks concatenate (``pipelines.tts.stream.STREAM_EXTENSIONS``)
STREAMED_FORMATS = frozenset({"pcm", "wav", "mp3", "aac"})
#: the header the ``openai`` client sends for ``with_streaming_response``
RAW_RESPONSE_HEADER = "x-stainless-raw-response"


def wants_stream(header: str | None, stream_format: str | None, response_format: str) -> bool:
    """Whether a speech request is answered chunk by chunk."""
    asked = (header or "").strip().lower() == "stream" or stream_format == "audio"
    return asked and response_format in STREAMED_FORMATS


@dataclass
class _Chunks:
    """Where a streamed attempt's chunks are: ``{base}{index:05d}{ext}``."""

    attempt: int
    base: str
    ext: str

    def uri(self, index: int) -> str:
        return f"{self.base}{index:05d}{self.ext}"


def _chunks_of(job: JobDoc, own: str) -> _Chunks | None:
    """The chunk layout of the job's current attempt, from any listed item under ``own``."""
    partial = job.partial
    if partial is None:
        return None
    for item in partial.items:
        uri = item.get("uri")
        if isinstance(uri, str) and uri.startswith(own) and "/stream/" in uri:
            base, name = uri.rsplit("/", 1)
            ext = name[name.index(".") :] if "." in name else ""
            return _Chunks(partial.attempt, base + "/", ext)
    return None


def _broken(message: str) -> PermanentError:
    """A streamed answer that cannot go on after its first byte."""
    return PermanentError(message, code="stream_broken")


async def speech_chunks(
    api: Api,
    user: User,
    body: JobCreate,
    key: str | None,
    timeout: float,
    disconnected: Callable[[], Awaitable[bool]],
    job_ids: list[str],
    ended: Callable[[str, JobDoc | None], Exception | None],
    whole_file: Callable[[str, JobDoc], Awaitable[AsyncIterator[bytes]]],
) -> AsyncIterator[bytes]:
    """Make the job and yield its audio as it is spoken (see the module's doc).

    ``job_ids`` receives the job's id; ``ended(job_id, job)`` is the error for a job that ended
    (or did not) without audio before the first byte, ``None`` for a succeeded one;
    ``whole_file`` answers a job that succeeded before any chunk was seen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    sent = 0  # chunks written
    layout: _Chunks | None = None
    with api.waits.hold(user.uid):
        job, _created = await run_in_threadpool(create_job, api, user, body, key)
        job_ids.append(job.id)
        own = f"gs://{api.settings.media_bucket}/results/{user.uid}/{job.id}/"
        async with api.watches.follow(job.id) as follower:
            latest: JobDoc | None = None
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                seen = await follower.next(min(left, DISCONNECT_POLL_SECONDS))
                if seen is None:
                    # Before the first byte the request is still ours to ask; after it, the server
                    # stops the body when the caller goes away.
                    if layout is None and await disconnected():
                        return
                    continue
                latest = seen
                status = seen.effective_status
                if status is JobStatus.RUNNING and seen.partial is not None:
                    found = _chunks_of(seen, own)
                    if found is not None and layout is not None and found.attempt != layout.attempt:
                        raise _broken(f"speech job {job.id} started over on another attempt")
                    layout = layout or found
                    if layout is not None:
                        while sent < seen.partial.count:
                            yield await run_in_threadpool(_read, api, layout.uri(sent))
                            sent += 1
                if status.is_final:
                    break
            if latest is None or not latest.effective_status.is_final or layout is None:
                if layout is not None:
                    raise _broken(f"speech job {job.id} did not finish within {timeout:g} s")
                error = ended(job.id, latest)
                if error is not None:
                    raise error
                assert latest is not None
                async for piece in await whole_file(job.id, latest):
                    yield piece
                return
            if latest.effective_status is not JobStatus.SUCCEEDED:
                raise _broken(f"speech job {job.id} ended {latest.effective_status.value}")
            total = int((latest.outputs or {}).get("chunks") or 0)
            audio = str((latest.outputs or {}).get("audio") or "")
            if not audio.startswith(layout.base.removesuffix("stream/")):
                raise _broken(f"speech job {job.id} ended on another attempt than the one streamed")
            while sent < total:
                yield await run_in_threadpool(_read, api, layout.uri(sent))
                sent += 1


def _read(api: Api, uri: str) -> bytes:
    try:
        _info, chunks = api.deps.blobs.stream(uri)
        return b"".join(chunks)
    except FileNotFoundError as exc:
        raise _broken(f"a streamed chunk is missing: {uri}") from exc


class _BoundedStream(StreamingResponse):
    """A streamed answer that ends by its deadline even when the caller reads nothing: a write
    waiting on the caller's full socket is given up there, the connection is closed without the
    body's end, and the chunks' generator is closed, so that its place under the waiting
    requests' caps and its job listener are free for the next request."""

    def __init__(self, body: AsyncIterator[bytes], deadline: float, timeout: float, **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self.deadline, self.timeout = deadline, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        left = max(self.deadline - asyncio.get_running_loop().time(), 0.0)
        try:
            with anyio.fail_after(left):
                await super().__call__(scope, receive, send)
        except TimeoutError as exc:
            error = _broken(f"the streamed answer was not read within {self.timeout:g} s")
            log.warning("streamed speech ended early: %s", error)
            raise error from exc
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def streamed_response(
    chunks: AsyncIterator[bytes], job_ids: list[str], media_type: str, timeout: float
) -> StreamingResponse:
    """The answer once its first bytes are in hand: any error before them is raised here, so that
    the route answers it as usual; the generator, started, closes its hold when it ends, when the
    answer is given up, or at the latest ``timeout`` seconds from now, read or not."""
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        first = await anext(chunks)
    except StopAsyncIteration:  # the caller went away before any audio
        return StreamingResponse(iter(()), status_code=204)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield first
            async for piece in chunks:
                yield piece
        except PermanentError as exc:
            log.warning("streamed speech ended early: %s", exc)
            raise
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    return _BoundedStream(body(), deadline, timeout, media_type=media_type, headers={"X-Job-Id": job_ids[0]})
