"""The GPU service's HTTP surface: Pub/Sub push endpoints and health.

Status codes are chosen for Pub/Sub: 200 acks (the job ended, or the delivery was a duplicate);
503 nacks a retryable failure and 429 nacks when at capacity, so Pub/Sub redelivers with backoff
while the job stays queued; 400 nacks a poison message, which the dead-letter policy then
removes. Never 202: the emulator treats it as a failure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from core.routes import PUSH_PREFIX, route
from gpu_service.auth import PushAuthError, PushVerifier
from gpu_service.pool import Health, ModelPool
from gpu_service.push import BadEnvelope, decode
from gpu_service.worker import Ack, Worker

log = logging.getLogger(__name__)

STATUS_FOR_ACK = {Ack.DONE: 200, Ack.RETRY: 503, Ack.BUSY: 429}


def create_app(worker: Worker) -> FastAPI:
    models: ModelPool = worker.pool
    slots = threading.BoundedSemaphore(worker.settings.max_concurrent_jobs)
    verifier = PushVerifier.from_settings(worker.settings)  # None when PUSH_AUTH is off

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if worker.settings.preload_pipelines:
            names = worker.settings.enabled_pipelines
            threading.Thread(target=models.preload, args=(names,), name="preload", daemon=True).start()
        else:
            models.health = Health.READY
        yield

    app = FastAPI(title="gpu-jobs GPU service", lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        body = {"status": models.health.value, "loaded": models.load_seconds(), "error": models.error}
        return JSONResponse(body, status_code=200 if models.health is Health.READY else 503)

    @app.post(PUSH_PREFIX + "{pipeline}")
    async def push(pipeline: str, request: Request) -> JSONResponse:
        return await handle(request, pipeline, None)

    @app.post(PUSH_PREFIX + "{pipeline}/{lane}")
    async def push_part(pipeline: str, lane: str, request: Request) -> JSONResponse:
        return await handle(request, pipeline, lane)

    async def handle(request: Request, pipeline: str, lane: str | None) -> JSONResponse:
        if verifier is not None:
            try:  # before anything is read: an unverified push touches no job
                await run_in_threadpool(verifier.verify, request.headers.get("Authorization"))
            except PushAuthError as exc:
                log.warning("push refused on %s: %s", request.url.path, exc.reason)
                return JSONResponse({"error": exc.reason}, status_code=exc.status_code)
        path = route(pipeline, lane).push_path
        try:
            envelope, message = decode(await request.body())
        except BadEnvelope as exc:
            log.error("poison message on %s: %s", path, exc)
            return JSONResponse({"error": str(exc)}, status_code=400)
        if message.pipeline != pipeline or message.ref.lane != lane:
            log.error(
                "job %s (%s, part %s) arrived on %s", message.job_id, message.pipeline, message.part, path
            )
            return JSONResponse({"error": "the message does not match the endpoint"}, status_code=400)
        log.info("push %s: job %s", envelope.message.message_id, message.job_id)
        if worker.draining.is_set():
            return JSONResponse({"outcome": Ack.BUSY, "detail": "shutting down"}, status_code=503)
        if models.health is not Health.READY:
            return JSONResponse({"outcome": Ack.BUSY, "detail": models.health.value}, status_code=429)
        if not slots.acquire(blocking=False):
            return JSONResponse({"outcome": Ack.BUSY, "detail": "at capacity"}, status_code=429)
        try:
            outcome = await run_in_threadpool(worker.handle, message)
        finally:
            slots.release()
        body = {"outcome": outcome.ack, "detail": outcome.detail, "jobId": message.job_id}
        return JSONResponse(body, status_code=STATUS_FOR_ACK[outcome.ack])

    return app
