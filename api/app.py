"""The FastAPI application: routes, CORS and the error shape. ``/docs`` and ``/openapi.json``
describe it; every route but ``/healthz`` needs ``Authorization: Bearer <Firebase ID token>``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import StreamingResponse

from api import errors, openai_speech
from api.auth import Caller
from api.events import job_events
from api.models import Health, Job, JobCreate, JobPage, Problem, Results, Upload, UploadCreate
from api.service import (
    MAX_PAGE_SIZE,
    Api,
    cancel_job,
    create_job,
    create_upload,
    list_jobs,
    owned,
    results,
    wait_for_end,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "the request is malformed"},
    401: {"model": Problem, "description": "no token, or not a valid one"},
    404: {"model": Problem, "description": "no such job of yours"},
}


def create_app(api: Api) -> FastAPI:
    app = FastAPI(
        title="gpu-jobs API",
        version="1",
        description="Create GPU jobs, follow them and fetch their results with a Firebase ID token. "
        "Errors are {code, message}, the same as a job document's error.",
    )
    app.state.api = api
    errors.install(app)
    if api.settings.api_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=api.settings.api_cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Firebase-AppCheck"],
            expose_headers=["Retry-After", "X-Job-Id"],
            max_age=600,
        )

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        return Health(status="ok")

    @app.post("/v1/uploads", status_code=201, response_model=Upload, responses=ERRORS)
    def post_upload(user: Caller, body: UploadCreate) -> Upload:
        """A signed URL to PUT one input file to (``uploads/{uid}/...``), bound to its type and size."""
        return create_upload(api, user, body)

    @app.post(
        "/v1/jobs",
        status_code=201,
        response_model=Job,
        responses={
            **ERRORS,
            200: {"model": Job, "description": "a retry with the same Idempotency-Key: the job it created"},
            409: {"model": Problem, "description": "the Idempotency-Key was used for another request"},
            422: {"model": Problem, "description": "the job was rejected: the job's error code and message"},
            429: {"model": Problem, "description": "over quota; see Retry-After"},
        },
    )
    async def post_job(
        user: Caller,
        body: JobCreate,
        response: Response,
        idempotency_key: Annotated[str | None, Header()] = None,
        wait: Annotated[float, Query(ge=0, description="seconds to wait for the job to end")] = 0,
    ) -> Job:
        """Create a job (validated and queued before the answer), optionally waiting for its end."""
        job, created = await run_in_threadpool(create_job, api, user, body, idempotency_key)
        if not created:
            response.status_code = 200
        seconds = min(wait, api.settings.api_max_wait_seconds)
        if seconds > 0 and not job.status.is_final:
            ended = await run_in_threadpool(wait_for_end, api, job.id, seconds)
            if ended is not None:
                job = Job.of(job.id, ended)
        return job

    @app.get("/v1/jobs", response_model=JobPage, responses=ERRORS)
    async def get_jobs(
        user: Caller,
        page_size: Annotated[int, Query(alias="pageSize", ge=1, le=MAX_PAGE_SIZE)] = 20,
        page_token: Annotated[str | None, Query(alias="pageToken")] = None,
    ) -> JobPage:
        """The caller's jobs, newest first."""
        return await run_in_threadpool(list_jobs, api, user, page_size, page_token)

    @app.get("/v1/jobs/{job_id}", response_model=Job, responses=ERRORS)
    async def get_job(user: Caller, job_id: str) -> Job:
        job = await run_in_threadpool(owned, api, user, job_id)
        return Job.of(job_id, job)

    @app.post("/v1/jobs/{job_id}/cancel", response_model=Job, responses={**ERRORS, 409: {"model": Problem}})
    async def post_cancel(user: Caller, job_id: str) -> Job:
        """Stop a job: one not started yet ends at once, a running one at its next checkpoint."""
        return await run_in_threadpool(cancel_job, api, user, job_id)

    @app.get(
        "/v1/jobs/{job_id}/results", response_model=Results, responses={**ERRORS, 409: {"model": Problem}}
    )
    async def get_results(user: Caller, job_id: str) -> Results:
        """The outputs of a succeeded job, with a short-lived signed GET URL per file."""
        return await run_in_threadpool(results, api, user, job_id)

    @app.get(
        "/v1/jobs/{job_id}/events",
        responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "job events"}},
    )
    async def get_events(user: Caller, job_id: str, request: Request) -> StreamingResponse:
        """Server-Sent Events: ``job`` (the job, at each change of status or progress), then ``end``."""
        await run_in_threadpool(owned, api, user, job_id)
        return StreamingResponse(
            job_events(api, job_id, request.is_disconnected),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    app.include_router(openai_speech.speech_router())
    openai_speech.install(app)

    return app
