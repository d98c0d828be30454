"""OpenAI's speech request as a tts job, and every refusal in OpenAI's error shape (no stack)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.errors import ApiError
from api.openai_speech import (
    PCM_SAMPLE_RATE,
    OpenAIError,
    SpeechRequest,
    error_of_job,
    job_inputs,
)
from core.contract import ErrorInfo, JobDoc, JobStatus
from infra.settings import Settings

VOICES = Settings(openai_voices={"alloy": "joe", "onyx": "joe-calm"})


def request(**body: Any) -> SpeechRequest:
    return SpeechRequest.model_validate({"model": "tts-1", "input": "Hello there.", "voice": "alloy", **body})


def refusal(body: dict[str, Any]) -> dict[str, Any]:
    """What a client is told for a request body that does not validate: status and error body."""
    with pytest.raises(ValidationError) as caught:
        SpeechRequest.model_validate(body)
    errors = [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]
    answer = OpenAIError.of_validation(RequestValidationError(errors)).response()
    assert answer.status_code == 400
    shaped: dict[str, Any] = json.loads(bytes(answer.body))
    assert set(shaped) == {"error"} and shaped["error"]["type"] == "invalid_request_error"
    error: dict[str, Any] = shaped["error"]
    return error


def test_openai_models_voices_and_formats_become_one_tts_job() -> None:
    for model in ("tts-1", "tts-1-hd", "gpt-4o-mini-tts"):
        assert job_inputs(request(model=model), VOICES) == {
            "text": "Hello there.",
            "format": "mp3",
            "speed": 1.0,
            "voice": "joe",
        }
    assert job_inputs(request(voice="onyx", response_format="wav", speed=1.5), VOICES) == {
        "text": "Hello there.",
        "format": "wav",
        "speed": 1.5,
        "voice": "joe-calm",
    }
    # A configured voice by name, as a string or as OpenAI's custom voice object.
    assert job_inputs(request(voice="joe-calm"), VOICES)["voice"] == "joe-calm"
    assert job_inputs(request(voice={"id": "joe-calm"}), VOICES)["voice"] == "joe-calm"
    # An OpenAI voice the deployment does not map speaks with the pipeline's default voice.
    assert "voice" not in job_inputs(request(voice="nova"), VOICES)


def test_raw_pcm_is_asked_for_at_openais_24_khz() -> None:
    assert job_inputs(request(response_format="pcm"), VOICES)["sample_rate"] == PCM_SAMPLE_RATE
    assert "sample_rate" not in job_inputs(request(response_format="flac"), VOICES)


def test_instructions_are_accepted_and_ignored() -> None:
    inputs = job_inputs(request(model="gpt-4o-mini-tts", instructions="Speak like a pirate."), VOICES)
    assert inputs == job_inputs(request(model="gpt-4o-mini-tts"), VOICES)


def test_an_unknown_model_is_404_model_not_found() -> None:
    with pytest.raises(OpenAIError) as caught:
        job_inputs(request(model="whisper-1"), VOICES)
    assert (caught.value.status, caught.value.param, caught.value.code) == (404, "model", "model_not_found")
    assert "tts-1" in caught.value.message


def test_a_voice_that_cannot_be_a_name_is_refused_before_any_job() -> None:
    with pytest.raises(OpenAIError) as caught:
        job_inputs(request(voice="../../etc/passwd"), VOICES)
    assert (caught.value.status, caught.value.param) == (400, "voice")
    assert "alloy" in caught.value.message


@pytest.mark.parametrize(
    ("body", "param", "code", "says"),
    [
        ({"input": ""}, "input", "string_below_min_length", "at least 1"),
        ({"input": "   \n"}, "input", "invalid_value", "blank"),
        ({"input": "x" * 4097}, "input", "string_above_max_length", "4096"),
        ({"response_format": "ogg"}, "response_format", "invalid_value", "'mp3'"),
        ({"speed": 4.5}, "speed", "decimal_above_max_value", "4"),
        ({"speed": 0.1}, "speed", "decimal_below_min_value", "0.25"),
        ({"speed": "fast"}, "speed", "invalid_type", "number"),
        ({"speed": True}, "speed", "invalid_type", "number"),
        ({"voice": 7}, "voice", "invalid_value", "voice name"),
        ({"stream_format": "sse"}, "stream_format", "invalid_value", "not supported"),
        ({"instructions": "x" * 4097}, "instructions", "string_above_max_length", "4096"),
        ({"temperature": 0.5}, "temperature", "unknown_parameter", "not a parameter"),
    ],
)
def test_bad_parameters_are_openai_errors_naming_the_parameter(
    body: dict[str, Any], param: str, code: str, says: str
) -> None:
    error = refusal({"model": "tts-1", "input": "Hi.", "voice": "alloy", **body})
    assert (error["param"], error["code"]) == (param, code)
    assert error["message"].startswith(f"{param}: ") and says in error["message"]


def test_a_missing_parameter_is_named() -> None:
    error = refusal({"model": "tts-1", "voice": "alloy"})
    assert (error["param"], error["code"]) == ("input", "missing_required_parameter")


def job(status: JobStatus, code: str | None = None, message: str = "", **error: Any) -> JobDoc:
    info = ErrorInfo(code=code, message=message, **error) if code else None
    return JobDoc(uid="u1", pipeline="tts", inputs={}, status=status, error=info)


@pytest.mark.parametrize(
    ("ended", "status", "code", "param"),
    [
        (
            job(JobStatus.REJECTED, "invalid_inputs", "inputs.voice: unknown voice 'x'"),
            400,
            "invalid_inputs",
            "voice",
        ),
        (
            job(JobStatus.REJECTED, "invalid_inputs", "inputs.text: 30000 characters"),
            400,
            "invalid_inputs",
            "input",
        ),
        (job(JobStatus.FAILED, "invalid_input", "the reference does not decode"), 400, "invalid_input", None),
        (job(JobStatus.FAILED, "unknown_voice", "inputs.voice: no voice 'x'"), 400, "unknown_voice", "voice"),
        (
            job(JobStatus.FAILED, "attempts_exhausted", "gave up after 5 attempts"),
            500,
            "attempts_exhausted",
            None,
        ),
        (job(JobStatus.FAILED, "pipeline_unavailable", "no model"), 503, "pipeline_unavailable", None),
        (job(JobStatus.CANCELLED), 409, "cancelled", None),
    ],
)
def test_a_job_that_ended_without_audio_is_an_openai_error(
    ended: JobDoc, status: int, code: str, param: str | None
) -> None:
    answer = error_of_job("job-1", ended)
    assert (answer.status, answer.code, answer.param) == (status, code, param)
    if status == 500:
        assert "job-1" in answer.message and "gave up" in answer.message
    # The job exists: a client retrying on its own would make a second one.
    if status in (400, 409, 500):
        assert answer.response().headers["x-should-retry"] == "false"


def test_a_script_for_several_voices_is_refused_saying_where_to_send_it() -> None:
    refused = ApiError("speaker_without_voice", "Speaker 2 has no voice: add it to voices")
    answer = OpenAIError.of_api_error(refused)
    assert (answer.status, answer.param, answer.code) == (400, "voice", "speaker_without_voice")
    assert answer.message.startswith("Speaker 2 has no voice") and "POST /v1/jobs" in answer.message


def test_quota_refusals_are_429_with_retry_after() -> None:
    answer = OpenAIError.of_api_error(ApiError("quota_exceeded", "the limit is 3", retry_after=30)).response()
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "30"
    assert json.loads(bytes(answer.body))["error"]["code"] == "rate_limit_exceeded"
    ended = job(JobStatus.REJECTED, "quota_exceeded", "the limit is 3", retry_after_seconds=12)
    assert error_of_job("j", ended).response().headers["Retry-After"] == "12"


def test_a_bad_token_is_401_invalid_api_key() -> None:
    answer = OpenAIError.of_api_error(ApiError("token_expired", "get a fresh one")).response()
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(bytes(answer.body)) == {
        "error": {
            "message": "get a fresh one",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def test_server_errors_have_openais_server_error_type() -> None:
    body = json.loads(bytes(OpenAIError(504, "job j did not finish", code="timeout").response().body))
    assert body["error"]["type"] == "server_error"


def test_openai_voices_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_VOICES", '{"alloy": "joe", "echo": "joe-calm"}')
    assert Settings().openai_voices == {"alloy": "joe", "echo": "joe-calm"}
    monkeypatch.setenv("OPENAI_VOICES", '{"alloy": "joe", "robot": "joe"}')
    with pytest.raises(ValidationError, match="'robot' is not an OpenAI voice; use alloy, ash"):
        Settings()
    monkeypatch.delenv("OPENAI_VOICES")
    with pytest.raises(ValidationError, match="not an OpenAI voice"):
        Settings(openai_voices={"robot": "joe"})
    with pytest.raises(ValidationError, match="not a voice name"):
        Settings(openai_voices={"alloy": "../joe"})
