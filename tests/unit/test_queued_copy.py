"""The queued job a message carries: exact to Firestore's nanosecond, and the job as written."""

from __future__ import annotations

from datetime import UTC, datetime

from proto.datetime_helpers import DatetimeWithNanoseconds

from core.contract import JobDoc, JobMessage, JobStatus, Lease, read_job
from core.patch import Patch
from core.recovery import decide_transition
from infra.jobs import LastWrite, applied
from infra.roundtrips import from_logs, summary

WHEN = DatetimeWithNanoseconds(2026, 12, 6, 23, 40, 1, nanosecond=123456789, tzinfo=UTC)


def _pending() -> JobDoc:
    return read_job(
        {
            "uid": "u1",
            "pipeline": "inpaint",
            "inputs": {"image": "gs://b/uploads/u1/a.png"},
            "status": "pending",
            "createdAt": datetime(2026, 12, 6, 23, 40, tzinfo=UTC),
            "lease": {"owner": "client", "expiresAt": datetime(2030, 1, 1, tzinfo=UTC)},
        }
    )


def test_the_queueing_write_is_the_job_as_it_was_written_with_the_commit_time() -> None:
    job = _pending()
    queue = Patch().server_time("queued_at").set("attempt", 0).delete("lease")
    decision = decide_transition(job, JobStatus.QUEUED, allowed_from=[JobStatus.PENDING], patch=queue)
    assert decision.patch is not None
    after = applied(job, decision.patch, WHEN)
    assert after.status is JobStatus.QUEUED and after.attempt == 0
    assert after.queued_at == WHEN and after.lease is None  # server time resolved, deletion applied
    assert after.inputs == {"image": "gs://b/uploads/u1/a.png"} and after.uid == "u1"


def test_a_message_carries_the_write_to_the_nanosecond() -> None:
    job = _pending()
    written = LastWrite(job, WHEN)
    copy = written.copy()
    assert copy is not None
    message = JobMessage(job_id="j1", pipeline="inpaint", uid="u1", queued=copy)
    back = JobMessage.model_validate_json(message.model_dump_json(by_alias=True, exclude_none=True))
    assert back.queued is not None
    again = LastWrite.from_copy(back.queued)
    known = again.known() if again is not None else None
    assert known is not None
    got_job, got_time = known
    assert got_time == WHEN and got_time.nanosecond == 123456789  # a precondition needs it exact
    assert got_job.lease == Lease(owner="client", expires_at=datetime(2030, 1, 1, tzinfo=UTC))
    assert got_job.created_at == datetime(2026, 12, 6, 23, 40, tzinfo=UTC)


def test_a_message_without_a_copy_still_reads_as_before() -> None:
    old = JobMessage.model_validate_json(b'{"jobId": "j1", "pipeline": "inpaint"}')
    assert old.queued is None
    assert LastWrite().copy() is None  # nothing written yet: nothing to carry


def test_round_trips_are_read_back_from_log_lines_with_beats_apart() -> None:
    from collections import Counter

    line = f"2026-12-06 23:40:01,000 INFO w: job j1 round trips: {summary(Counter(firestore=3, beats=1))} (x)"
    counts = from_logs([line, "job j1 round trips: firestore=2 storage=2 pubsub=1 (created)"], {"j1"})
    assert counts["j1"] == Counter(firestore=5, storage=2, pubsub=1, beats=1)
