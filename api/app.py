"""The FastAPI application: routes, CORS and the error shape. ``/docs`` and ``/openapi.json``
describe it; every route but ``/healthz`` needs ``Authorization: Bearer <Firebase ID token>``.

The middleware, outermost first: CORS; the body limit (413 before anything reads a body); the
token check (401 before any other work). Waiting for a job (``?wait``, the event stream, the
speech route) holds no worker thread, is capped per user and in all (429 / 503 with
``Retry-After``) and stops when the caller goes away (:mod:`api.shedding`, :mod:`api.watch`).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from api import errors, openai_speech
from api.discovery import MAX_AGE_SECONDS, Discovery, PipelineList
from api.errors import ApiError
from api.events import job_events
from api.models import Health, Job, JobCreate, JobPage, Problem, Results, Upload, UploadCreate
from api.notifications import notifications_router
from api.prefer import preferred_wait
from api.service import (
    MAX_PAGE_SIZE,
    Api,
    cancel_job,
    create_job,
    create_upload,
    list_jobs,
    owned,
    results,
)
from api.shedding import AuthGate, BodyLimit, Caller
from api.watch import wait_for_end

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "the request is malformed"},
    401: {"model": Problem, "description": "no token, or not a valid one"},
    404: {"model": Problem, "description": "no such job of yours"},
    413: {"model": Problem, "description": "the body is larger than API_MAX_BODY_BYTES"},
}
#: past a cap on waiting requests or event streams
BUSY: dict[int | str, dict[str, Any]] = {
    429: {"model": Problem, "description": "too many of your requests are waiting; see Retry-After"},
    503: {"model": Problem, "description": "this instance is at its limit; see Retry-After"},
}


#: what a created job's id leads to (OpenAPI links: clients and fuzzers follow them)
JOB_LINKS = {
    name: {
        "operationRef": f"#/paths/~1v1~1jobs~1{{job_id}}{tail}",
        "parameters": {"job_id": "$response.body#/id"},
    }
    for name, tail in [
        ("GetJob", "/get"),
        ("CancelJob", "~1cancel/post"),
        ("GetResults", "~1results/get"),
        ("GetEvents", "~1events/get"),
    ]
}


def render_error(path: str, exc: ApiError) -> Response:
    """An error answered before a route runs, in the shape of the route's family."""
    if path.startswith(openai_speech.OPENAI_PREFIX):
        return openai_speech.OpenAIError.of_api_error(exc).response()
    return exc.response()


def create_app(api: Api) -> FastAPI:
    app = FastAPI(
        title="gpu-jobs API",
        version="1",
        description="Create GPU jobs, follow them and fetch their results with a Firebase ID token. "
        "Errors are {code, message}, the same as a job document's error.",
    )
    app.state.api = api
    errors.install(app)
    # Starlette wraps the last added outermost.
    app.add_middleware(AuthGate, verifier=lambda: app.state.api.verifier, render=render_error)
    app.add_middleware(BodyLimit, limit=api.settings.api_max_body_bytes, render=render_error)
    if api.settings.api_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=api.settings.api_cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "X-Firebase-AppCheck",
                "Prefer",
                "Last-Event-ID",
            ],
            expose_headers=["Retry-After", "X-Job-Id", "Preference-Applied"],
            max_age=600,
        )

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        return Health(status="ok")

    discovery = Discovery(api.deps.catalog, api.settings.max_input_bytes)

    @app.get(
        "/v1/pipelines",
        response_model=PipelineList,
        responses={**ERRORS, 304: {"description": "not changed since the ETag in If-None-Match"}},
    )
    def get_pipelines(
        user: Caller,
        if_none_match: Annotated[str | None, Header(description="the ETag of an earlier answer")] = None,
    ) -> Response:
        """The enabled pipelines: each one's input and output JSON Schema (file inputs marked
        ``x-file``), the files it takes, its cost caps and whether it streams partial output.

        Built once per process (it changes only with the deployment); answered with an ``ETag``.
        """
        body, etag = discovery.answer()
        headers = {"ETag": etag, "Cache-Control": f"private, max-age={MAX_AGE_SECONDS}"}
        if if_none_match is not None and etag in [tag.strip() for tag in if_none_match.split(",")]:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)

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
            **BUSY,
            201: {"description": "the job, queued", "links": JOB_LINKS},
            200: {
                "model": Job,
                "description": "a retry with the same Idempotency-Key: the job it created",
                "links": JOB_LINKS,
            },
            409: {"model": Problem, "description": "the Idempotency-Key was used for another request"},
            422: {"model": Problem, "description": "the job was rejected: the job's error code and message"},
            429: {
                "model": Problem,
                "description": "over quota, or too many of your requests waiting; see Retry-After",
            },
        },
    )
    async def post_job(
        request: Request,
        user: Caller,
        body: JobCreate,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(description="makes retries safe: the same key and request give the same job"),
        ] = None,
        wait: Annotated[float | None, Query(ge=0, description="seconds to wait for the job to end")] = None,
        prefer: Annotated[
            str | None,
            Header(
                description="RFC 7240; 'wait=N' is the header form of ?wait (the query wins when both are sent)"
            ),
        ] = None,
    ) -> Job:
        """Create a job (validated and queued before the answer), optionally waiting for its end.

        **Idempotency-Key.** The job's id is derived from the caller and the key. A retry of the
        same request (same pipeline and inputs) answers ``200`` with the job it created, as the job
        is now; the same key with another request is ``409 idempotency_key_reused``; so is a key
        whose job id is held by a job of someone else (never shown). A job refused for a reason
        that passes (``429 quota_exceeded``) does not use the key up: retried after
        ``Retry-After``, the same request is admitted once it fits (``201``, a new job under the
        same id) or refused again with a new ``Retry-After``. Every other rejection is final and
        answered again on a retry.

        **wait** (at most ``API_MAX_WAIT_SECONDS``) keeps the request open until the job ends; the
        wait holds no worker thread, stops when the caller goes away, and counts against
        ``API_MAX_WAITS_PER_USER`` and ``API_MAX_WAITS`` (past them: ``429`` / ``503`` with
        ``Retry-After``, checked before the job is made). ``Prefer: wait=N`` (RFC 7240) asks the
        same without the query; the answer then says ``Preference-Applied: wait=N`` with the
        seconds it waited at most.
        """
        asked = wait
        if asked is None and (preferred := preferred_wait(prefer)) is not None:
            asked = preferred
            response.headers["Preference-Applied"] = f"wait={min(asked, api.settings.api_max_wait_seconds):g}"
        seconds = min(asked or 0.0, api.settings.api_max_wait_seconds)
        async with AsyncExitStack() as stack:
            if seconds > 0:
                stack.enter_context(api.waits.hold(user.uid))
            job, created = await run_in_threadpool(create_job, api, user, body, idempotency_key)
            if not created:
                response.status_code = 200
            if seconds > 0 and not job.status.is_final:
                ended = await wait_for_end(api.watches, job.id, seconds, request.is_disconnected)
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
        """The job; ``live`` says what it is doing now, and for a queued job its place in its
        pipeline's queue and when it should start and end (from the pipeline's recent run times
        and the capacity serving it now)."""
        job = await run_in_threadpool(owned, api, user, job_id)
        live = await run_in_threadpool(api.live.shown, job_id, job)
        return Job.of(job_id, job, live)

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
        responses={
            **ERRORS,
            **BUSY,
            200: {"content": {"text/event-stream": {}}, "description": "job events"},
        },
    )
    async def get_events(
        user: Caller,
        job_id: str,
        request: Request,
        last_event_id: Annotated[
            str | None, Header(description="resume after this event: what it showed is not sent again")
        ] = None,
    ) -> StreamingResponse:
        """Server-Sent Events: ``job`` (the job, at each change of status, progress or live state),
        ``partial`` (output made so far: the new items only), then ``end``. A reconnect with
        ``Last-Event-ID`` resumes after that event instead of starting over.

        The stream checks its token again every ``API_STREAM_RECHECK_SECONDS`` (revocation
        included) and ends with an ``error`` event ``{code, message}`` once it is not valid any
        more. Open streams are capped per user and in all (``429`` / ``503`` with ``Retry-After``).
        """
        await run_in_threadpool(owned, api, user, job_id)
        authorization = getattr(request.state, "authorization", None) or request.headers.get("authorization")
        stack = AsyncExitStack()
        stack.callback(api.streams.enter(user.uid))
        try:
            follower = await stack.enter_async_context(api.watches.follow(job_id))
        except BaseException:
            await stack.aclose()
            raise

        async def recheck() -> None:
            # The ID token only: App Check attests the app at connect time, not for the stream's life.
            _, _, token = (authorization or "").partition(" ")
            await run_in_threadpool(api.verifier.verify_token, token.strip(), check_revoked=True)

        return StreamingResponse(
            job_events(api, job_id, follower, request.is_disconnected, recheck, stack.aclose, last_event_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            # Also when the stream never started (the caller left first).
            background=BackgroundTask(stack.aclose),
        )

    app.include_router(notifications_router(api))
    app.include_router(openai_speech.speech_router())
    openai_speech.install(app)

    return app
