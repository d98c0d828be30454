"""What a worker remembers of the jobs it claimed: which deliveries skip a doomed write, and
which are known duplicates of a job it ended."""

from __future__ import annotations

from datetime import UTC

from proto.datetime_helpers import DatetimeWithNanoseconds

from core.contract import QueuedCopy
from gpu_service.claimed import Claimed

QUEUED_AT = DatetimeWithNanoseconds(2026, 12, 7, 5, 40, 1, nanosecond=123456789, tzinfo=UTC)
COPY = QueuedCopy(
    update_time=QUEUED_AT.rfc3339(), job={"uid": "u1", "pipeline": "inpaint", "status": "queued"}
)


def test_a_job_never_claimed_here_is_claimed_against_its_copy() -> None:
    assert Claimed().delivery("j1", COPY) == (False, COPY)
    assert Claimed().delivery("j1", None) == (False, None)


def test_a_job_claimed_here_is_read_first_its_copy_being_out_of_date() -> None:
    claimed = Claimed()
    claimed.claimed("j1", QUEUED_AT)
    assert claimed.delivery("j1", COPY) == (False, None)  # running here, or ended non-final


def test_a_redelivery_of_the_write_a_job_ended_here_was_claimed_from_is_a_known_duplicate() -> None:
    claimed = Claimed()
    claimed.claimed("j1", QUEUED_AT)
    claimed.ended("j1")
    assert claimed.delivery("j1", COPY) == (True, None)
    # The same id queued by another write (the document deleted and created again): read it.
    later = QueuedCopy(update_time=DatetimeWithNanoseconds(2026, 12, 7, 6, tzinfo=UTC).rfc3339(), job={})
    assert claimed.delivery("j1", later) == (False, None)
    assert claimed.delivery("j1", None) == (False, None)  # no copy to compare: read it


def test_a_claim_decided_on_a_read_of_the_queueing_write_matches_that_write() -> None:
    claimed = Claimed()
    read = DatetimeWithNanoseconds.from_rfc3339(COPY.update_time)  # what a read of the job gives
    claimed.claimed("j1", read)
    claimed.ended("j1")
    assert claimed.delivery("j1", COPY) == (True, None)


def test_the_oldest_jobs_are_forgotten_past_the_limit() -> None:
    claimed = Claimed(limit=2)
    for job_id in ("j1", "j2", "j3"):
        claimed.claimed(job_id, QUEUED_AT)
        claimed.ended(job_id)
    assert claimed.delivery("j1", COPY) == (False, COPY)  # forgotten: claimed as ever
    assert claimed.delivery("j3", COPY) == (True, None)
