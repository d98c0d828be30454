"""The GPU service's HTTP surface: Pub/Sub push endpoints and health.

Status codes are chosen for Pub/Sub: 200 acks (the job ended, or the delivery was a duplicate);
503 nacks a retryable failure. A push that finds every slot busy waits for one (fairly, up to
``PUSH_WAIT_SECONDS``) and only then answers 429: the job stays queued, and the redriver
(gpu_service/redrive.py) runs it from Firestore as soon as a slot is idle, whatever Pub/Sub's
backoff is doing; 400 nacks a poison message, which the dead-letter policy then
removes. Never 202: the emulator treats it as a failure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from core.contract import JobMessage
from core.lanes import Priority
from core.lifecycle import Delivered, described, redeliver
from core.routes import PUSH_PREFIX, route
from gpu_service.auth import PushAuthError, PushVerifier
from gpu_service.capacity import Capacity
from gpu_service.pool import Health, ModelPool
from gpu_service.push import BadEnvelope, decode, waited_since
from gpu_service.redrive import Redriver
from gpu_service.worker import Worker

log = logging.getLogger(__name__)


def create_app(worker: Worker, capacity: Capacity | None = None) -> FastAPI:
    models: ModelPool = worker.pool
    settings = worker.settings
    verifier = PushVerifier.from_settings(settings)  # None when PUSH_AUTH is off
    capacity = capacity or Capacity(
        settings.max_concurrent_jobs, settings.pipeline_slots, aging_seconds=settings.batch_aging_seconds
    )
    redriver = Redriver(
        worker,
        capacity,
        worker.catalog.names,
        after_seconds=settings.redrive_after_seconds,
        poll_seconds=settings.redrive_poll_seconds,
        reserve_seconds=settings.push_wait_seconds,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.preload_pipelines:
            names = settings.enabled_pipelines
            threading.Thread(target=models.preload, args=(names,), name="preload", daemon=True).start()
        else:
            models.health = Health.READY
        if settings.redrive:
            redriver.start()
        yield
        redriver.stop()

    app = FastAPI(title="gpu-jobs GPU service", lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        body = {
            "status": models.health.value,
            "loaded": models.load_seconds(),
            "pipelines": models.states(),
            "error": models.error,
            "capacity": capacity.stats(),
            "redriven": redriver.started_units,
            "batching": models.batch_stats(),
            "model": models.gate.stats() if models.gate else None,
            # Plugins that were left out (import error, name clash): the others serve on.
            "broken_plugins": [
                {"entry": b.entry, "distribution": b.distribution, "error": b.error}
                for b in worker.catalog.broken
            ],
        }
        return JSONResponse(body, status_code=200 if models.health is Health.READY else 503)

    @app.post(PUSH_PREFIX + "{pipeline}")
    async def push(pipeline: str, request: Request) -> JSONResponse:
        return await serve_push(request, pipeline, None)

    @app.post(PUSH_PREFIX + "{pipeline}/{lane}")
    async def push_part(pipeline: str, lane: str, request: Request) -> JSONResponse:
        return await serve_push(request, pipeline, lane)

    def take_slot_and_process(message: JobMessage, waited: float) -> Delivered | None:
        """A slot (``None``: none freed in ``PUSH_WAIT_SECONDS``), then the unit run in it."""
        slot = capacity.acquire(
            message.pipeline,
            message.uid or "",
            settings.push_wait_seconds,
            priority=message.priority or Priority.INTERACTIVE,
            weight=message.weight or 1.0,
            waited=waited,
        )
        if slot is None:
            return None
        try:
            return worker.process(message)
        finally:
            capacity.release(slot)

    async def serve_push(request: Request, pipeline: str, lane: str | None) -> JSONResponse:
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
            return JSONResponse({"outcome": "busy", "detail": "shutting down"}, status_code=503)
        if models.health is not Health.READY:
            return JSONResponse({"outcome": "busy", "detail": models.health.value}, status_code=429)
        # Wait for a slot (fairly, see gpu_service/capacity.py) rather than turn the push away:
        # a 429 makes Pub/Sub back off this subscription while the GPU may soon be idle. The wait
        # and the run are one hand-off to a worker thread, not two.
        outcome = await run_in_threadpool(
            partial(take_slot_and_process, message, waited_since(envelope.message.publish_time))
        )
        if outcome is None:
            # Still busy: the job stays queued, and the redriver takes it when a slot frees.
            return JSONResponse({"outcome": "busy", "detail": "at capacity"}, status_code=429)
        again = redeliver(outcome)
        body = {
            "outcome": "retry" if again else "done",
            "detail": described(outcome),
            "jobId": message.job_id,
        }
        return JSONResponse(body, status_code=503 if again else 200)

    return app
