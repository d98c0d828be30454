"""Typed writes: every field a write names is checked against the job contract when it is built."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.contract import ErrorInfo, JobStatus, Lease, PartState, Progress
from core.patch import DELETE, SERVER_TIME, Patch, UnknownField


def test_fields_are_written_by_their_camel_case_names() -> None:
    expires = datetime(2026, 1, 1, tzinfo=UTC)
    patch = (
        Patch()
        .set("status", JobStatus.RUNNING)
        .set("last_error", ErrorInfo(code="x", message="m"))
        .set("parts.speech.lease", Lease(owner="w1", expires_at=expires))
        .server_time("queued_at")
        .delete("cancel_requested")
    )
    assert patch.to_dict() == {
        "status": JobStatus.RUNNING,
        "lastError": {"code": "x", "message": "m", "retryable": False},
        "parts.speech.lease": {"owner": "w1", "expiresAt": expires},
        "queuedAt": SERVER_TIME,
        "cancelRequested": DELETE,
    }


@pytest.mark.parametrize(
    "path",
    [
        "stauts",  # a misspelt top-level field
        "lastError",  # the Firestore name, not the attribute
        "parts.speech.leese",  # a misspelt field inside a part
        "progress.fraction.value",  # below a plain value
        "parts.a.b.lease",  # a map key that is not a plain identifier segment
        "parts.`x`",  # a key with path syntax in it
    ],
)
def test_a_misspelt_field_fails_when_the_write_is_built(path: str) -> None:
    with pytest.raises(UnknownField):
        Patch().set(path, 1)


def test_values_must_fit_the_field() -> None:
    with pytest.raises(ValueError):
        Patch().set("status", "runing")
    with pytest.raises(ValueError):
        Patch().set("attempt", "three")
    with pytest.raises(TypeError):
        Patch().set("lease", {"owner": "w", "expiresAt": "soon"})  # models, not raw dicts
    with pytest.raises(TypeError):
        Patch().set("error", Progress(fraction=0.5, stage="x"))  # the wrong model


def test_free_form_maps_accept_any_json() -> None:
    patch = Patch().set("outputs", {"text": "hi", "segments": [1, 2]}).set("runtime.device", "cpu")
    assert patch.to_dict() == {"outputs": {"text": "hi", "segments": [1, 2]}, "runtime.device": "cpu"}


def test_a_stamp_adds_the_server_time_inside_the_written_model() -> None:
    patch = Patch().set("progress", Progress(fraction=0.5, stage="decoding"), stamp=True)
    assert patch.to_dict()["progress"] == {"fraction": 0.5, "stage": "decoding", "updatedAt": SERVER_TIME}
    with pytest.raises(UnknownField):
        Patch().set("error", ErrorInfo(code="x", message="m"), stamp=True)


def test_overlapping_paths_in_one_write_are_refused() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        Patch().set("parts.a", PartState()).set("parts.a.status", JobStatus.QUEUED)
