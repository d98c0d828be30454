"""The job writes built as protobufs are the very writes the Firestore library builds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1 import _helpers
from hypothesis import given, settings
from hypothesis import strategies as st
from proto.datetime_helpers import DatetimeWithNanoseconds

from core.contract import JobDoc, JobStatus, Progress, Timings, Usage, read_job
from core.lifecycle import Ending, decide_claim, decide_finish
from core.work import WorkRef
from infra import firestore_writes
from infra.jobs import to_firestore, usage_increments

DOC = "projects/p/databases/(default)/documents/jobs/j1"
WHEN = DatetimeWithNanoseconds(2026, 12, 7, 5, 30, 1, nanosecond=123456789, tzinfo=UTC)


def _same(ours: Any, theirs: Any) -> None:
    assert ours == theirs._pb, f"ours:\n{ours}\nthe library's:\n{theirs._pb}"


def _update(data: dict[str, Any], last: Any = None) -> None:
    option = _helpers.LastUpdateOption(last) if last is not None else None
    _same(firestore_writes.update(DOC, data, last), _helpers.pbs_for_update(DOC, data, option)[0])


def _queued() -> JobDoc:
    return read_job(
        {
            "uid": "u1",
            "pipeline": "inpaint",
            "inputs": {"image": "gs://b/uploads/u1/a.png", "mask": "gs://b/uploads/u1/m.png"},
            "status": "queued",
            "attempt": 0,
            "createdAt": datetime(2026, 12, 7, 5, 30, tzinfo=UTC),
            "queuedAt": WHEN,
            "priority": "interactive",
        }
    )


def test_the_claim_is_the_librarys_write_with_its_update_time_precondition() -> None:
    job = _queued()
    now = datetime(2026, 12, 7, 5, 30, 2, 500, tzinfo=UTC)
    decision = decide_claim(job, WorkRef("j1"), owner="host:1", now=now, lease_seconds=60, max_attempts=3)
    assert decision.patch is not None
    _update(to_firestore(decision.patch), WHEN)


def test_the_finish_and_its_usage_roll_up_are_the_librarys_writes() -> None:
    job = _queued().model_copy(update={"status": JobStatus.RUNNING, "attempt": 1})
    job = read_job(
        {**job.to_firestore(), "lease": {"owner": "host:1", "expiresAt": WHEN + timedelta(seconds=60)}}
    )
    ending = Ending(
        JobStatus.SUCCEEDED,
        outputs={"files": {"result.png": "gs://b/results/u1/j1/1/result.png"}, "size": [32, 32], "empty": {}},
        progress=Progress(fraction=1.0, stage="done"),
        timings=Timings(delivery=0.01, queue=0.2, total=0.5, inference=0.01),
        runtime={"worker": "host:1", "backend": "opencv", "steps": 3, "ratio": 0.5, "on": True, "none": None},
        usage=Usage(gpu_seconds=0.0123, queue_seconds=0.2),
    )
    decision = decide_finish(job, WorkRef("j1"), owner="host:1", attempt=1, ending=ending)
    assert decision.patch is not None
    _update(to_firestore(decision.patch), WHEN)
    rollup = usage_increments("2026-12-07", {"jobs": 1, "gpuSeconds": 0.0123, "pipelines.inpaint.jobs": 1})
    rollup["active"] = {"0af3-job": firestore.DELETE_FIELD}
    ledger = "projects/p/databases/(default)/documents/quotas/u1"
    _same(firestore_writes.merge(ledger, rollup), _helpers.pbs_for_set_with_merge(ledger, rollup, True)[0])


def test_a_created_job_is_the_librarys_create() -> None:
    data = _queued().to_firestore()
    data["updatedAt"] = firestore.SERVER_TIMESTAMP
    data["source"] = {"kind": "upload", "generation": "17", "tags": ["a", 1, 2.5, None, {"k": b"\x00"}]}
    _same(firestore_writes.create(DOC, data), _helpers.pbs_for_create(DOC, data)[0])


def test_a_write_without_a_precondition_time_requires_the_document() -> None:
    _update({"cancelRequested": True, "updatedAt": firestore.SERVER_TIMESTAMP})


def test_plain_times_keys_that_need_quoting_and_str_enums_are_encoded_as_the_library_does() -> None:
    data = {
        "parts.speech-1.status": JobStatus.RUNNING,
        "parts.speech-1.lease": {"owner": "w`1\\x", "expiresAt": datetime(2026, 12, 7, 5, 31, 7, 999999)},
        "2026-12-07.count": 3,
        "weird.`name`": "x",
        "lease": firestore.DELETE_FIELD,
        "progress": {"fraction": 0.5, "updatedAt": firestore.SERVER_TIMESTAMP},
        "tags": ("a", "b"),
    }
    _update(data, datetime(2026, 12, 7, 5, 30, tzinfo=UTC))


@pytest.mark.parametrize(
    ("data", "build"),
    [
        ({}, firestore_writes.update),
        ({"a": 1, "a.b": 2}, firestore_writes.update),
        ({"a": {"b": firestore.DELETE_FIELD}}, firestore_writes.update),
        ({"a..b": 1}, firestore_writes.update),
        ({"a": firestore.DELETE_FIELD}, firestore_writes.create),
    ],
)
def test_writes_the_library_refuses_are_refused(data: dict[str, Any], build: Any) -> None:
    with pytest.raises(ValueError):
        build(DOC, data)


_KEYS = st.sampled_from(["a", "b", "status", "x-1", "2026-12-07", "_k", "sp ace"])
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.datetimes(timezones=st.just(UTC)),
    st.lists(st.one_of(st.integers(min_value=0, max_value=9), st.text(max_size=3)), max_size=3),
)
_VALUES = st.recursive(
    st.one_of(
        _LEAVES, st.just(firestore.SERVER_TIMESTAMP), st.builds(firestore.Increment, st.integers(0, 9))
    ),
    lambda inner: st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, min_size=1, max_size=4))
def test_any_document_is_merged_and_created_as_the_library_does(data: dict[str, Any]) -> None:
    _same(firestore_writes.merge(DOC, data), _helpers.pbs_for_set_with_merge(DOC, data, True)[0])
    _same(firestore_writes.create(DOC, data), _helpers.pbs_for_create(DOC, data)[0])


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["a", "b.c", "d.e.f", "x-1", "g.2026-12-07"]),
        st.one_of(_VALUES, st.just(firestore.DELETE_FIELD)),
        min_size=1,
        max_size=4,
    )
)
def test_any_update_is_the_librarys_update(data: dict[str, Any]) -> None:
    try:
        theirs = _helpers.pbs_for_update(DOC, data, _helpers.LastUpdateOption(WHEN))[0]
    except (ValueError, TypeError):  # the library refuses overlapping paths with either
        with pytest.raises(ValueError):
            firestore_writes.update(DOC, data, WHEN)
        return
    _same(firestore_writes.update(DOC, data, WHEN), theirs)
