"""The job contract: states, transitions, the error shape and the wire format clients see."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.contract import (
    FINAL_STATES,
    TRANSITIONS,
    ErrorInfo,
    JobDoc,
    JobMessage,
    JobStatus,
    can_transition,
    state_for_error,
    validate_job_id,
)
from core.errors import Cancelled, InvalidInput, OutOfGpuMemory, PermanentError, RetryableError


def test_final_states_have_no_way_out() -> None:
    for state in FINAL_STATES:
        assert TRANSITIONS[state] == frozenset()
        assert state.is_final


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        (JobStatus.PENDING, JobStatus.QUEUED, True),
        (JobStatus.PENDING, JobStatus.REJECTED, True),
        (JobStatus.QUEUED, JobStatus.RUNNING, True),
        (JobStatus.RUNNING, JobStatus.QUEUED, True),  # retry
        (JobStatus.RUNNING, JobStatus.SUCCEEDED, True),
        (JobStatus.RUNNING, JobStatus.REJECTED, False),
        (JobStatus.PENDING, JobStatus.SUCCEEDED, True),  # a reused result (docs/cost.md)
        (JobStatus.QUEUED, JobStatus.SUCCEEDED, False),
        (JobStatus.SUCCEEDED, JobStatus.FAILED, False),
        (JobStatus.CANCELLED, JobStatus.QUEUED, False),
    ],
)
def test_transitions(current: JobStatus, new: JobStatus, allowed: bool) -> None:
    assert can_transition(current, new) is allowed


def test_document_uses_camel_case_names_clients_rely_on() -> None:
    job = JobDoc.model_validate(
        {"uid": "u1", "pipeline": "transcribe", "inputs": {"media": "gs://b/o"}, "cancelRequested": True}
    )
    assert job.cancel_requested is True
    assert job.effective_status is JobStatus.PENDING  # a document without status
    data = job.to_firestore()
    assert data["cancelRequested"] is True
    assert {"uid", "pipeline", "inputs"} <= set(data)
    error = ErrorInfo(code="too_large", message="m", retryable=False).to_firestore()
    assert error == {"code": "too_large", "message": "m", "retryable": False}


def test_fields_of_a_newer_contract_are_ignored_when_read() -> None:
    job = JobDoc.model_validate({"uid": "u1", "pipeline": "p", "appTag": "from a newer client"})
    assert "appTag" not in job.to_firestore()  # and never written back: writes are Patches


@pytest.mark.parametrize("uid", ["", "a b", "x" * 129, "semi;colon"])
def test_bad_uid_is_rejected(uid: str) -> None:
    with pytest.raises(ValidationError, match="uid"):
        JobDoc.model_validate({"uid": uid, "pipeline": "p"})


@pytest.mark.parametrize("job_id", ["", "has space", "a/b", "-leading", "x" * 129])
def test_bad_job_id_is_invalid_input(job_id: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_job_id(job_id)
    assert err.value.code == "invalid_job_id"
    with pytest.raises(ValidationError):
        JobMessage(job_id=job_id, pipeline="p")


@pytest.mark.parametrize(
    ("exc", "attempts_left", "state"),
    [
        (InvalidInput("x"), True, JobStatus.FAILED),
        (PermanentError("x"), True, JobStatus.FAILED),
        (RetryableError("x"), True, None),
        (OutOfGpuMemory("x"), True, None),
        (RetryableError("x"), False, JobStatus.FAILED),
        (RuntimeError("bug"), True, None),
        (RuntimeError("bug"), False, JobStatus.FAILED),
        (Cancelled("x"), True, JobStatus.CANCELLED),
    ],
)
def test_errors_map_to_states(exc: Exception, attempts_left: bool, state: JobStatus | None) -> None:
    assert state_for_error(exc, attempts_left=attempts_left) is state


def test_error_info_from_unexpected_exception_hides_details_and_is_retryable() -> None:
    info = ErrorInfo.from_exception(KeyError("secret-path"))
    assert info.code == "internal" and info.retryable and "secret-path" not in info.message
    assert ErrorInfo.from_exception(OutOfGpuMemory("oom")).code == "gpu_out_of_memory"
