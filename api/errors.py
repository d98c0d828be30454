"""Every error answer is ``{"code", "message"}``, the shape of a job document's ``error``; the
HTTP status comes from the code, in one table."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.models import Problem
from core.contract import ErrorInfo
from core.errors import bounded

#: Rejection codes whose status is not 422 (a request that is well formed but cannot run).
STATUS_FOR_CODE = {
    "quota_exceeded": 429,
    "forbidden_object": 403,
    "priority_not_allowed": 403,
    "wrong_bucket": 403,
    "unauthenticated": 401,
    "invalid_token": 401,
    "token_expired": 401,
    "app_check_required": 401,
    "invalid_app_check": 401,
    "not_found": 404,
    "idempotency_key_reused": 409,
    "not_finished": 409,
    "already_final": 409,
    "invalid_request": 400,
    "unavailable": 503,
    "too_many_requests": 429,
    "overloaded": 503,
    "request_timeout": 408,
}


class ApiError(Exception):
    def __init__(self, code: str, message: str, *, status: int | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = bounded(message)
        self.status = status or STATUS_FOR_CODE.get(code, 422)
        self.retry_after = retry_after

    @classmethod
    def of_job_error(cls, error: ErrorInfo) -> ApiError:
        """The answer for a job that ended with ``error``: the same code and message."""
        return cls(error.code, error.message, retry_after=error.retry_after_seconds)

    def with_status(self, status: int) -> ApiError:
        self.status = status
        return self

    def response(self) -> JSONResponse:
        body = Problem(code=self.code, message=self.message, retry_after_seconds=self.retry_after)
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="gpu-jobs"'
        return JSONResponse(
            body.model_dump(by_alias=True, exclude_none=True), status_code=self.status, headers=headers
        )


def install(app: FastAPI) -> None:
    """Answer FastAPI's own errors (bad JSON, unknown routes) in the same shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:10]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}")
        return ApiError("invalid_request", "; ".join(parts)).response()

    @app.exception_handler(Exception)
    async def _crash(_request: Request, exc: Exception) -> JSONResponse:
        # The server still logs the traceback (Starlette re-raises after answering).
        return ApiError("internal", "internal error; try again", status=500).response()

    app.add_exception_handler(StarletteHTTPException, http_error)


async def http_error(_request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (no such route, method not allowed) in the API's shape."""
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    detail = exc.detail if isinstance(exc, StarletteHTTPException) else "internal error"
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    return ApiError(code, str(detail), status=status).response()
