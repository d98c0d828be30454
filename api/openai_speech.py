"""OpenAI's text-to-speech route, ``POST /v1/audio/speech``, on the ``tts`` pipeline.

Existing OpenAI clients (the official ``openai`` package among them) call it with this API's base
URL and the user's Firebase ID token as their API key. The request is OpenAI's; it becomes a
``tts`` job created exactly as ``POST /v1/jobs`` creates one (listed for the user, counted against
the quota, followed and fetched like any other job), the answer waits for the job's end and is the
audio itself. With reuse on for ``tts`` (``REUSE_PIPELINES``), the same user's same request is
answered at once with the audio of the finished job it reuses, and costs no GPU time. Every error is OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
with OpenAI's status codes; a job still running at ``OPENAI_SPEECH_TIMEOUT_SECONDS`` is a ``504``
whose message names the job (it goes on, and its result can be fetched later).

The wait holds no worker thread, stops as soon as the caller goes away, and counts against the
same caps as ``POST /v1/jobs?wait`` (``API_MAX_WAITS_PER_USER``, ``API_MAX_WAITS``): past them the
answer is ``429`` / ``503`` with ``Retry-After``, before any job is made.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from starlette.concurrency import iterate_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.auth import User
from api.errors import ApiError, http_error
from api.models import JobCreate
from api.service import Api, create_job
from api.shedding import Caller
from api.speech_stream import RAW_RESPONSE_HEADER, speech_chunks, streamed_response, wants_stream
from api.watch import wait_for_end
from core.contract import JobDoc, JobStatus
from core.errors import RetryableError, bounded, shown
from infra.settings import OPENAI_VOICE_NAMES, VOICE_NAME, Settings

log = logging.getLogger(__name__)

SPEECH_PIPELINE = "tts"
#: the OpenAI-compatible routes: every answer under it is OpenAI's shape
OPENAI_PREFIX = "/v1/audio/"
#: OpenAI's speech models; all of them are this deployment's one tts pipeline
MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
MAX_INPUT_CHARS = 4096
MAX_INSTRUCTIONS_CHARS = 4096
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
#: OpenAI's raw pcm is 24 kHz; raw samples carry no rate, so the job is asked for exactly that
PCM_SAMPLE_RATE = 24000
#: a job input named in a job's error message -> the OpenAI parameter it came from
_PARAM_OF_INPUT = {
    "text": "input",
    "voice": "voice",
    "voices": "voice",
    "format": "response_format",
    "sample_rate": "response_format",
    "speed": "speed",
}
#: pydantic error types -> OpenAI's error codes for a bad parameter
_CODE_OF_ERROR = {
    "missing": "missing_required_parameter",
    "extra_forbidden": "unknown_parameter",
    "string_too_long": "string_above_max_length",
    "string_too_short": "string_below_min_length",
    "less_than_equal": "decimal_above_max_value",
    "greater_than_equal": "decimal_below_min_value",
    "string_type": "invalid_type",
    "float_type": "invalid_type",
    "float_parsing": "invalid_type",
    "json_invalid": "invalid_json",
}


# -- the request ---------------------------------------------------------------------------------


def _voice_name(value: Any) -> Any:
    """OpenAI's voice: a name, or a custom voice object ``{"id": name}``."""
    if isinstance(value, dict) and set(value) == {"id"}:
        value = value["id"]
    if not isinstance(value, str):
        raise ValueError("must be a voice name such as 'alloy', or {'id': name}")
    return value


class SpeechRequest(BaseModel):
    """OpenAI's ``audio/speech`` request body."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(max_length=100, description="tts-1, tts-1-hd or gpt-4o-mini-tts (all the same model)")
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS, description="the text to speak")
    voice: Annotated[str, BeforeValidator(_voice_name)] = Field(
        max_length=100,
        description="an OpenAI voice (alloy, ash, ballad, coral, echo, fable, nova, onyx, sage, shimmer, "
        "verse...; OPENAI_VOICES maps them to this deployment's voices) or a voice of this deployment",
    )
    instructions: str | None = Field(
        None,
        max_length=MAX_INSTRUCTIONS_CHARS,
        description="accepted and ignored: the voices here take no style prompt",
    )
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0, strict=True)
    stream_format: str | None = Field(
        None,
        description="only 'audio': pcm, wav, mp3 and aac are then sent chunk by chunk as they are spoken",
    )

    @field_validator("input")
    @classmethod
    def _words(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is blank: give the text to speak")
        return value

    @field_validator("stream_format")
    @classmethod
    def _audio_only(cls, value: str | None) -> str | None:
        if value not in (None, "audio"):
            raise ValueError(
                f"{shown(value)} is not supported: this endpoint answers with the audio itself ('audio')"
            )
        return value


def tts_voice(voice: str, settings: Settings) -> str | None:
    """The tts voice for OpenAI's ``voice`` (``None``: the pipeline's default voice).

    Raises:
        OpenAIError: not an OpenAI voice and not something a voice can be named.
    """
    if voice in OPENAI_VOICE_NAMES:
        return settings.openai_voices.get(voice)
    if not VOICE_NAME.match(voice):
        raise OpenAIError(
            400,
            f"voice {shown(voice)} is neither an OpenAI voice ({', '.join(sorted(OPENAI_VOICE_NAMES))}) "
            "nor a voice name of this deployment",
            param="voice",
            code="invalid_value",
        )
    return voice


def job_inputs(request: SpeechRequest, settings: Settings) -> dict[str, Any]:
    """The ``tts`` job's inputs for an OpenAI request.

    Raises:
        OpenAIError: an unknown model (404, as OpenAI answers) or voice.
    """
    if request.model not in MODELS:
        raise OpenAIError(
            404,
            f"the model {shown(request.model)} does not exist here; use one of {', '.join(MODELS)}",
            param="model",
            code="model_not_found",
        )
    inputs: dict[str, Any] = {
        "text": request.input,
        "format": request.response_format,
        "speed": request.speed,
    }
    voice = tts_voice(request.voice, settings)
    if voice is not None:
        inputs["voice"] = voice
    if request.response_format == "pcm":
        inputs["sample_rate"] = PCM_SAMPLE_RATE
    return inputs


# -- errors in OpenAI's shape ----------------------------------------------------------------------


class OpenAIError(Exception):
    """An answer in OpenAI's error shape.

    ``retry=False`` tells OpenAI's clients not to retry on their own (``x-should-retry``): set once
    a job exists, so that a retry never makes a second job.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
        retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = bounded(message)
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.retry = retry

    def response(self) -> JSONResponse:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.retry is not None:
            headers["x-should-retry"] = "true" if self.retry else "false"
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="gpu-jobs"'
        return JSONResponse(body, status_code=self.status, headers=headers)

    @classmethod
    def of_api_error(cls, exc: ApiError) -> OpenAIError:
        """This API's own refusals (token, quota, a rejected job) in OpenAI's terms."""
        if exc.status == 401:
            return cls(401, exc.message, code="invalid_api_key")
        if exc.code in ("quota_exceeded", "too_many_requests"):
            return cls(429, exc.message, code="rate_limit_exceeded", retry_after=exc.retry_after)
        if exc.code in ("unknown_pipeline", "pipeline_unavailable"):
            return cls(
                503, f"text to speech is not available on this deployment: {exc.message}", code=exc.code
            )
        status = 400 if exc.status == 422 else exc.status
        message = _explained(exc.code, exc.message)
        param = _param_of(exc.message, exc.code)
        return cls(status, message, code=exc.code, param=param, retry_after=exc.retry_after)

    @classmethod
    def of_validation(cls, exc: RequestValidationError) -> OpenAIError:
        errors = list(exc.errors())
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return cls(400, "the body is not valid JSON", code="invalid_json")
        parts, params = [], []
        for err in errors[:5]:
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            if err.get("type") == "extra_forbidden":
                message = "not a parameter of this endpoint (model, input, voice, instructions, response_format, speed)"
            if loc:
                params.append(loc[0])
                parts.append(f"{loc[0]}: {message}")
            else:
                parts.append(f"the body must be a JSON object of the speech parameters: {message}")
        code = _CODE_OF_ERROR.get(str(first.get("type")), "invalid_value")
        return cls(400, "; ".join(parts), code=code, param=params[0] if params else None)


def _param_of(message: str, code: str | None = None) -> str | None:
    """The OpenAI parameter a job error is about: by its code, or the input its message names
    (``inputs.voice: ...``); ``None`` when neither says."""
    if code in _TTS_INPUT_CODES:
        return _TTS_INPUT_CODES[code]
    found = re.match(r"^inputs\.([a-z_]+)", message)
    return _PARAM_OF_INPUT.get(found[1]) if found else None


#: the codes of the tts pipeline's ``InvalidInput`` errors (``pipelines/tts/text.py``, ``checks.py``)
#: -> the OpenAI parameter at fault
_TTS_INPUT_CODES = {
    "text_too_long": "input",
    "empty_text": "input",
    "unlabelled_speaker": "input",
    "bad_speaker_label": "input",
    "empty_turn": "input",
    "too_many_speakers": "input",
    "not_a_script": "input",
    "unknown_speaker": "input",
    "speaker_without_voice": "voice",
    "unknown_voice": "voice",
    "references_not_supported": "voice",
}


def _explained(code: str, message: str) -> str:
    """A job's refusal, with what it means for a caller who cannot send the job's other inputs."""
    if code in ("speaker_without_voice", "not_a_script", "unknown_speaker"):
        return (
            f"{message} (the input reads as a 'Speaker N:' script; this endpoint speaks one voice: "
            "send a script for several voices to POST /v1/jobs with 'voices')"
        )
    return message


def _client_fault(code: str) -> bool:
    """Whether a job that failed while running failed on its inputs (``InvalidInput``)."""
    return code.startswith(("invalid", "unsupported")) or code in _TTS_INPUT_CODES or code == "too_large"


def error_of_job(job_id: str, job: JobDoc) -> OpenAIError:
    """The answer for a speech job that ended without audio."""
    status = job.effective_status
    if status is JobStatus.CANCELLED:
        return OpenAIError(409, f"the speech job {job_id} was cancelled", code="cancelled", retry=False)
    error = job.error
    code = error.code if error else "failed"
    message = error.message if error else "no error recorded"
    if code == "quota_exceeded":
        retry_after = error.retry_after_seconds if error else None
        return OpenAIError(429, message, code="rate_limit_exceeded", retry_after=retry_after)
    if code in ("unknown_pipeline", "pipeline_unavailable"):
        return OpenAIError(503, f"text to speech is not available on this deployment: {message}", code=code)
    if status is JobStatus.REJECTED or _client_fault(code):
        explained = _explained(code, message)
        return OpenAIError(400, explained, code=code, param=_param_of(message, code), retry=False)
    return OpenAIError(500, f"the speech job {job_id} failed: {message}", code=code, retry=False)


class OpenAIRoute(APIRoute):
    """A route whose every error, the caller's token and the body's validation included, is
    answered in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as exc:
                return exc.response()
            except ApiError as exc:
                return OpenAIError.of_api_error(exc).response()
            except RequestValidationError as exc:
                return OpenAIError.of_validation(exc).response()
            except StarletteHTTPException as exc:
                # FastAPI's own refusals, e.g. a body that is not UTF-8 ("error parsing the body").
                return OpenAIError(exc.status_code, str(exc.detail), code="invalid_request").response()
            except RetryableError as exc:
                log.warning("speech request: %s", exc)
                return OpenAIError(503, "a service is unavailable; try again", code="unavailable").response()
            except Exception:
                log.exception("speech request failed")
                return OpenAIError(500, "internal error; try again", code="internal").response()

        return handle


def install(app: FastAPI) -> None:
    """Answer unknown routes and methods under ``/v1/audio/`` in OpenAI's shape too (after
    ``api.errors.install``, whose handler still answers every other path)."""

    async def _http(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException) or not request.url.path.startswith(OPENAI_PREFIX):
            return await http_error(request, exc)
        where = f"{request.method} {request.url.path[:120]}"
        if exc.status_code == 404:
            return OpenAIError(
                404, f"Invalid URL ({where}): this API speaks POST /v1/audio/speech only"
            ).response()
        return OpenAIError(exc.status_code, f"{where}: {exc.detail}").response()

    app.add_exception_handler(StarletteHTTPException, _http)


# -- waiting and answering -------------------------------------------------------------------------


def open_audio(api: Api, job_id: str, job: JobDoc) -> tuple[int, Iterator[bytes]]:
    """The size and bytes of a succeeded speech job's audio (``outputs.audio``). A job that reused
    an earlier result (``reusedFrom``, always the same owner's) names that job's audio.

    Raises:
        OpenAIError: the job names no audio of its own (or of the job it reused), or the file is gone.
    """
    uri = (job.outputs or {}).get("audio")
    results = f"gs://{api.settings.media_bucket}/results/{job.uid}/"
    own = tuple(f"{results}{made_by}/" for made_by in (job_id, job.reused_from) if made_by)
    if not isinstance(uri, str) or not uri.startswith(own):
        raise OpenAIError(500, f"the speech job {job_id} ended without audio", code="no_audio", retry=False)
    try:
        info, chunks = api.deps.blobs.stream(uri)
    except FileNotFoundError as exc:
        raise OpenAIError(
            500, f"the audio of speech job {job_id} is no longer stored", code="no_audio", retry=False
        ) from exc
    return info.size, chunks


async def speak(
    api: Api,
    user: User,
    request: SpeechRequest,
    key: str | None,
    disconnected: Callable[[], Awaitable[bool]],
) -> Response:
    """Create the tts job, wait for it, answer with its audio (or OpenAI's error)."""
    body = JobCreate(pipeline=SPEECH_PIPELINE, inputs=job_inputs(request, api.settings))
    timeout = api.settings.openai_speech_timeout_seconds
    with api.waits.hold(user.uid):
        job, _created = await run_in_threadpool(create_job, api, user, body, key)
        if job.status.is_final:  # ended already: a reused result (or a retry of an ended request)
            ended = await run_in_threadpool(api.deps.jobs.get, job.id)
        else:
            ended = await wait_for_end(api.watches, job.id, timeout, disconnected)
    error = _error_of_end(job.id, ended, timeout)
    if error is not None:
        raise error
    assert ended is not None
    size, chunks = await run_in_threadpool(open_audio, api, job.id, ended)
    return StreamingResponse(
        chunks,
        media_type=CONTENT_TYPES[request.response_format],
        headers={"Content-Length": str(size), "X-Job-Id": job.id},
    )


def _error_of_end(job_id: str, ended: JobDoc | None, timeout: float) -> OpenAIError | None:
    """The answer for a speech job as last seen, if it is not its audio: the 504 for one still
    running at the timeout, the job's error for one that ended without audio."""
    if ended is None or not ended.effective_status.is_final:
        return OpenAIError(
            504,
            f"the speech job {job_id} did not finish within {timeout:g} s; it goes on: follow it with "
            f"GET /v1/jobs/{job_id} and fetch its audio from GET /v1/jobs/{job_id}/results",
            code="timeout",
            retry=False,
        )
    if ended.effective_status is not JobStatus.SUCCEEDED:
        return error_of_job(job_id, ended)
    return None


async def speak_streamed(
    api: Api,
    user: User,
    request: SpeechRequest,
    key: str | None,
    disconnected: Callable[[], Awaitable[bool]],
) -> Response:
    """Create the tts job with ``stream: true`` and answer its chunks as they are spoken
    (``api/speech_stream.py``)."""
    body = JobCreate(pipeline=SPEECH_PIPELINE, inputs={**job_inputs(request, api.settings), "stream": True})
    timeout = api.settings.openai_speech_timeout_seconds

    async def whole_file(job_id: str, job: JobDoc) -> AsyncIterator[bytes]:
        _size, chunks = await run_in_threadpool(open_audio, api, job_id, job)
        return iterate_in_threadpool(chunks)

    job_ids: list[str] = []
    chunks = speech_chunks(
        api,
        user,
        body,
        key,
        timeout,
        disconnected,
        job_ids,
        lambda job_id, job: _error_of_end(job_id, job, timeout),
        whole_file,
    )
    return await streamed_response(chunks, job_ids, CONTENT_TYPES[request.response_format], timeout)


_ERROR_BODY = {
    "content": {
        "application/json": {
            "example": {
                "error": {"message": "...", "type": "invalid_request_error", "param": None, "code": None}
            }
        }
    }
}


def speech_router() -> APIRouter:
    router = APIRouter(route_class=OpenAIRoute, tags=["OpenAI-compatible"])

    @router.post(
        "/v1/audio/speech",
        response_class=Response,
        responses={
            200: {"content": {t: {} for t in CONTENT_TYPES.values()}, "description": "the audio file"},
            400: {**_ERROR_BODY, "description": "a bad parameter, or the job refused its input"},
            401: {**_ERROR_BODY, "description": "the API key is not a valid Firebase ID token"},
            404: {**_ERROR_BODY, "description": "an unknown model"},
            413: {**_ERROR_BODY, "description": "the body is larger than API_MAX_BODY_BYTES"},
            429: {**_ERROR_BODY, "description": "over quota, or too many waiting requests; see Retry-After"},
            500: {**_ERROR_BODY, "description": "the job failed"},
            503: {**_ERROR_BODY, "description": "this instance is at its limit; see Retry-After"},
            504: {**_ERROR_BODY, "description": "the job did not end in time; the message names it"},
        },
    )
    async def create_speech(
        request: Request,
        user: Caller,
        body: SpeechRequest,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Response:
        """OpenAI's text to speech: the audio of ``input`` (the job is one of the caller's jobs).
        The API key is the user's Firebase ID token; errors are OpenAI's shape. A streaming request
        (``with_streaming_response``, or ``stream_format: "audio"``) for pcm, wav, mp3 or aac gets
        the audio chunk by chunk as it is spoken."""
        api = request.app.state.api
        header = request.headers.get(RAW_RESPONSE_HEADER)
        if wants_stream(header, body.stream_format, body.response_format):
            return await speak_streamed(api, user, body, idempotency_key, request.is_disconnected)
        return await speak(api, user, body, idempotency_key, request.is_disconnected)

    return router
