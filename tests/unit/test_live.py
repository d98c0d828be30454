"""Live state and partial output without a stack: the estimate's arithmetic, the phases, the
bounded partial field, the ``Prefer`` header and where a resumed event stream picks up."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud.firestore_v1._helpers import encode_value

from api.events import _new_items, resume_point
from api.live import _whole_seconds
from api.prefer import preferred_wait
from core.contract import JobDoc, PartialOutput, Phase, Progress
from core.lifecycle import decide_claim, decide_heartbeat
from core.live import estimated_start, mean_run_seconds, phase_of
from core.work import WorkRef
from devkit.memdoc import MemDoc
from gpu_service.heartbeat import PARTIAL_TEXT_CHARS, Heartbeat, PartialBuffer

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


# -- the estimate -------------------------------------------------------------------------------------


def test_a_queued_job_starts_when_a_slot_is_free_after_every_job_ahead_of_it() -> None:
    # Two slots: one job started 1 s ago, one just now, 2 s each; three jobs ahead.
    # Slots free at +1 and +2; the jobs ahead start at +1, +2, +3; ours when the next is free: +4.
    start = estimated_start(NOW, ahead=3, running_since=[at(-1), at(0)], run_seconds=2, slots=2)
    assert start == at(4)


def test_an_idle_slot_starts_the_first_job_now() -> None:
    assert estimated_start(NOW, ahead=0, running_since=[at(-1)], run_seconds=5, slots=2) == NOW


def test_a_running_job_past_its_usual_time_is_expected_to_end_now_not_in_the_past() -> None:
    start = estimated_start(NOW, ahead=1, running_since=[at(-60)], run_seconds=10, slots=1)
    assert start == at(10)


def test_more_jobs_running_than_slots_counts_the_running_ones_as_the_capacity() -> None:
    # Other instances serve the pipeline too: three run although one instance has two slots.
    start = estimated_start(NOW, ahead=2, running_since=[at(0), at(0), at(0)], run_seconds=3, slots=2)
    assert start == at(3)


def job(**fields: Any) -> JobDoc:
    return JobDoc.model_validate({"uid": "u1", "pipeline": "p", **fields})


def test_the_run_time_is_the_mean_of_succeeded_jobs_and_a_reused_result_does_not_count() -> None:
    done = [
        job(status="succeeded", startedAt=at(0), finishedAt=at(2)),
        job(status="succeeded", startedAt=at(0), finishedAt=at(4)),
        job(status="succeeded", startedAt=at(0), finishedAt=at(0), reusedFrom="other"),
        job(status="succeeded"),  # no timestamps: not counted
    ]
    assert mean_run_seconds(done) == 3.0
    assert mean_run_seconds([]) is None


@pytest.mark.parametrize(
    ("fields", "phase"),
    [
        ({"status": "pending"}, None),
        ({"status": "queued"}, Phase.WAITING_FOR_GPU),
        ({"status": "running"}, Phase.RUNNING),
        ({"status": "running", "progress": {"fraction": 0, "stage": "downloading"}}, Phase.DOWNLOADING),
        ({"status": "running", "progress": {"fraction": 0, "stage": "loading model"}}, Phase.LOADING_MODEL),
        ({"status": "running", "progress": {"fraction": 0.4, "stage": "transcribing"}}, Phase.RUNNING),
        ({"status": "running", "progress": {"fraction": 1, "stage": "uploading"}}, Phase.UPLOADING),
        ({"status": "succeeded"}, None),
    ],
)
def test_the_phase_of_a_job(fields: dict[str, Any], phase: Phase | None) -> None:
    assert phase_of(job(**fields)) == phase


# -- the document -------------------------------------------------------------------------------------

JOB = WorkRef("j1")


def test_the_claim_removes_the_place_in_the_queue() -> None:
    doc = MemDoc(
        {
            "uid": "u1",
            "pipeline": "p",
            "status": "queued",
            "live": {"phase": "waiting_for_gpu", "position": 3},
        }
    )
    doc.do(lambda j: decide_claim(j, JOB, owner="w1", now=doc.now, lease_seconds=10, max_attempts=3))
    assert doc.data is not None and doc.data["status"] == "running" and "live" not in doc.data


def test_partial_output_is_written_with_the_heartbeat_of_a_whole_job_only() -> None:
    doc = MemDoc({"uid": "u1", "pipeline": "p", "status": "queued"})
    doc.do(lambda j: decide_claim(j, JOB, owner="w1", now=doc.now, lease_seconds=10, max_attempts=3))
    partial = PartialOutput(attempt=1, count=1, items=[{"start": 0.0, "end": 1.0, "text": "hello"}])
    doc.do(
        lambda j: decide_heartbeat(
            j, JOB, owner="w1", attempt=1, now=doc.now, lease_seconds=10, partial=partial
        )
    )
    assert doc.data is not None
    assert doc.data["partial"] == {
        "attempt": 1,
        "count": 1,
        "items": [{"start": 0.0, "end": 1.0, "text": "hello"}],
    }


def test_the_partial_buffer_keeps_the_last_items_cut_to_size_and_counts_them_all() -> None:
    buffer = PartialBuffer(attempt=2, max_items=3)
    assert buffer.take() is None
    for n in range(5):
        buffer.add({"start": float(n), "text": "x" * (PARTIAL_TEXT_CHARS + 100) if n == 4 else f"s{n}"})
    taken = buffer.take()
    assert taken is not None and taken.attempt == 2 and taken.count == 5
    assert [i["start"] for i in taken.items] == [2.0, 3.0, 4.0]
    assert len(taken.items[-1]["text"]) == PARTIAL_TEXT_CHARS
    assert buffer.take() is None  # nothing new: the next write carries no partial field


def test_a_progress_write_names_its_phase_and_carries_no_partial_of_its_own() -> None:
    written: list[Progress | None] = []

    def beat(progress: Progress | None) -> bool:
        written.append(progress)
        return False

    heartbeat = Heartbeat("j1", beat, lease_seconds=30, min_interval=0.0, draining=threading.Event())
    heartbeat.report(0.0, "loading model")
    heartbeat.report(0.5, "transcribing")
    assert [(p.stage, p.phase) for p in written if p] == [
        ("loading model", Phase.LOADING_MODEL),
        ("transcribing", Phase.RUNNING),
    ]


# -- the API's edges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("wait=10", 10.0),
        ("respond-async, wait=5", 5.0),
        ("Wait = 7 ; foo=bar", 7.0),
        ('wait="3"', 3.0),
        ("return=minimal", None),
        ("wait=soon", None),
        ("wait=-1", None),
        ("wait=nan", None),
        ("wait=2, wait=9", 2.0),
    ],
)
def test_the_prefer_header_wait(header: str | None, seconds: float | None) -> None:
    assert preferred_wait(header) == seconds


def test_a_last_event_id_names_the_partial_items_and_the_job_seen() -> None:
    assert resume_point("12.0123456789abcdef") == (12, "0123456789abcdef")
    assert resume_point(None) == (0, None)
    assert resume_point("7") == (0, None)  # not one of ours: start over
    assert resume_point("1.XYZ") == (0, None)


def test_a_resumed_stream_sends_only_the_partial_items_after_those_seen() -> None:
    items = [{"n": n} for n in range(5, 10)]  # the last five of ten
    partial = PartialOutput(attempt=1, count=10, items=items)
    assert _new_items(partial, 8) == ([{"n": 8}, {"n": 9}], 10)
    assert _new_items(partial, 2) == (items, 10)  # older ones are gone from the document
    assert _new_items(partial, 10) == ([], 10)
    retried = PartialOutput(attempt=2, count=1, items=[{"n": 0}])
    assert _new_items(retried, 10) == ([{"n": 0}], 1)  # a new attempt starts over
    assert _new_items(None, 3) == ([], 3)


def test_an_estimate_from_firestore_times_is_a_plain_datetime_firestore_can_store() -> None:
    # Running jobs' startedAt come back as Firestore's own datetime subclass: the estimate made
    # from them must still be writable to the document.
    since = DatetimeWithNanoseconds(2026, 12, 6, 11, 59, 59, 500_000, tzinfo=UTC)
    start = _whole_seconds(estimated_start(NOW, ahead=0, running_since=[since], run_seconds=2, slots=1))
    assert type(start) is datetime and start == at(1)
    assert encode_value(start).timestamp_value == at(1)
