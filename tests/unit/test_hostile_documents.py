"""Client-written values the contract does not allow: each ends as a clear, bounded error.

These are the pure halves (reading, bounding, deciding); tests/integration/test_hostile_inputs.py
drives the same values through the emulators end to end.
"""

from __future__ import annotations

import io
import json
import zlib
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from core.contract import ErrorInfo, JobStatus, read_job
from core.errors import MAX_MESSAGE_CHARS, InvalidInput, shown
from core.lifecycle import ClaimOutcome, decide_claim
from core.spec import Catalog, check_input_location
from core.work import WorkRef
from devkit.memdoc import MemDoc
from functions.handlers import MAX_INPUT_DEPTH, _metadata_inputs, check_inputs_shape
from gpu_service.endings import seconds_between
from gpu_service.pool import Health, ModelPool
from infra.settings import Settings
from pipelines.imaging.fields import ImageLimitsConfig
from pipelines.imaging.headers import check_image_header


@pytest.mark.parametrize(
    "data",
    [
        {"uid": "u", "pipeline": "p", "status": "pending", "createdAt": "garbage"},
        {"uid": "u", "pipeline": "p", "status": "pending", "inputs": "not a map"},
        {"uid": "u p", "pipeline": "p", "status": "pending"},
        {"uid": 7, "pipeline": ["p"], "status": "pending"},
        {"uid": "u", "pipeline": "p", "status": "pending", "attempt": "many"},
        {"uid": "u", "pipeline": "p", "status": "pending", "progress": {"fraction": 9}},
    ],
)
def test_a_document_that_does_not_fit_is_read_never_raised(data: dict[str, Any]) -> None:
    job = read_job(data)
    assert job.malformed and job.malformed.startswith("the job document does not fit the contract")
    assert job.effective_status is JobStatus.PENDING
    assert len(job.malformed) <= 400


def test_a_malformed_document_is_ended_by_the_claim_never_run() -> None:
    doc = MemDoc({"uid": "u", "pipeline": "p", "status": "queued", "createdAt": "garbage"})
    result = doc.do(
        lambda _: decide_claim(
            read_job(doc.data or {}), WorkRef("j"), owner="w", now=doc.now, lease_seconds=5, max_attempts=3
        )
    )
    assert result.outcome is ClaimOutcome.INVALID and result.ended is JobStatus.FAILED
    assert doc.data is not None and doc.data["error"]["code"] == "invalid_job"
    assert "createdAt" in doc.data["error"]["message"]


def test_error_messages_are_bounded_whatever_they_echo() -> None:
    huge = "x" * 600_000
    error = ErrorInfo(code="unknown_pipeline", message=f"unknown pipeline {huge}")
    assert len(error.message) == MAX_MESSAGE_CHARS
    assert len(shown(huge)) == 60 and shown("short") == "'short'"


@pytest.mark.parametrize(
    ("inputs", "why"),
    [
        ({"a": "x" * 70_000}, "bytes as JSON"),
        (json.loads("[" * 0 + '{"a":' * 30 + "1" + "}" * 30), "nested more than"),
        ({"l": [[[[[[[[["deep"]]]]]]]]]}, "nested more than"),
    ],
)
def test_inputs_are_bounded_in_size_and_depth(inputs: Any, why: str) -> None:
    with pytest.raises(InvalidInput, match=why) as exc:
        check_inputs_shape(inputs, Settings())
    assert exc.value.code == "invalid_inputs"


def test_upload_metadata_nested_200_levels_is_refused_with_the_readme_code() -> None:
    nested = '{"a":' * 200 + "1" + "}" * 200  # fits in the 8 KiB metadata limit
    assert len(nested) < 8192
    with pytest.raises(InvalidInput) as exc:
        _metadata_inputs(nested, Settings())
    assert exc.value.code == "invalid_inputs" and f"{MAX_INPUT_DEPTH} levels" in exc.value.message
    for raw in ("[1, 2]", "not json", '"a string"'):
        with pytest.raises(InvalidInput, match="JSON object"):
            _metadata_inputs(raw, Settings())


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("gs://other-bucket/uploads/u1/a.wav", "wrong_bucket"),
        ("gs://media/uploads/u2/a.wav", "forbidden_object"),
        ("gs://media/uploads/u1a.wav", "forbidden_object"),
        ("gs://media/results/u1/j/1/out.txt", "forbidden_object"),
    ],
)
def test_inputs_must_be_the_owners_own_uploads(uri: str, code: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        check_input_location("media", uri, "u1", "media")
    assert exc.value.code == code
    check_input_location("media", "gs://media/uploads/u1/a.wav", "u1", "media")  # the owner's own


def test_a_client_clock_in_the_future_gives_no_negative_timings() -> None:
    later = datetime(2099, 1, 1, tzinfo=UTC)
    assert seconds_between(later, datetime(2026, 1, 1, tzinfo=UTC)) is None


# -- image headers, checked from a range read before queueing -----------------------------------


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buf, "PNG")
    return buf.getvalue()


def _header(head: bytes, complete: bool = True, **limits: int) -> None:
    check_image_header(head, complete=complete, what="inputs.image", config=ImageLimitsConfig(**limits))


def test_a_good_image_header_passes_even_when_only_its_head_was_read() -> None:
    data = _png(64, 48)
    head = data[:100]
    for complete, chunk in ((True, data), (False, head)):
        _header(chunk, complete, max_side=64, min_side=48)  # exactly at the limits: queued
        # the same bytes one pixel over a limit: refused, so the size was read from them
        with pytest.raises(InvalidInput) as exc:
            _header(chunk, complete, max_side=63)
        assert exc.value.code == "image_too_large" and "64" in exc.value.message


@pytest.mark.parametrize(
    ("head", "complete", "limits", "code"),
    [
        (b"this is a text file with a .png name", True, {}, "invalid_image"),
        (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", True, {}, "invalid_image"),
        (b"", True, {}, "invalid_image"),
        (None, True, {"max_input_pixels": 100}, "image_too_large"),
        (None, True, {"max_side": 32}, "image_too_large"),
        (None, True, {"min_side": 100}, "image_too_small"),
    ],
)
def test_a_bad_image_is_refused_from_its_header(
    head: bytes | None, complete: bool, limits: dict[str, int], code: str
) -> None:
    with pytest.raises(InvalidInput) as exc:
        _header(head if head is not None else _png(64, 48), complete, **limits)
    assert exc.value.code == code


def test_a_decompression_bomb_is_refused_from_a_tiny_header() -> None:
    # A PNG header claiming 100000 x 100000 pixels, without the pixels.
    bomb = _png(1, 1)
    ihdr = bomb.index(b"IHDR")
    body = b"IHDR" + (100_000).to_bytes(4, "big") * 2 + bomb[ihdr + 12 : ihdr + 17]
    forged = bomb[:ihdr] + body + zlib.crc32(body).to_bytes(4, "big") + bomb[ihdr + 21 :]
    with pytest.raises(InvalidInput) as exc:
        _header(forged[:200], complete=False)
    assert exc.value.code == "image_too_large"


# -- a pipeline whose model cannot load ------------------------------------------------------------


def test_a_pipeline_that_cannot_load_is_reported_and_the_others_serve() -> None:
    good = SimpleNamespace(name="good", config=ImageLimitsConfig, load=lambda config: object())

    def broken_load(config: Any) -> Any:
        raise FileNotFoundError("/models/flux: no such directory")

    bad = SimpleNamespace(name="bad", config=ImageLimitsConfig, load=broken_load)
    pool = ModelPool(Catalog(specs={"good": good, "bad": bad}))  # type: ignore[dict-item]
    pool.preload(["good", "bad"])
    assert pool.health is Health.READY
    states = pool.states()
    assert states["good"] == "ready" and states["bad"].startswith("failed: FileNotFoundError")
    with pytest.raises(Exception, match="cannot run here") as exc:
        pool.get(bad)  # type: ignore[arg-type]
    assert getattr(exc.value, "code", None) == "pipeline_unavailable"


def test_a_service_none_of_whose_pipelines_can_load_is_not_healthy() -> None:
    def broken_load(config: Any) -> Any:
        raise RuntimeError("no model")

    bad = SimpleNamespace(name="bad", config=ImageLimitsConfig, load=broken_load)
    pool = ModelPool(Catalog(specs={"bad": bad}))  # type: ignore[dict-item]
    pool.preload(["bad"])
    assert pool.health is Health.FAILED and pool.error and "no model" in pool.error
