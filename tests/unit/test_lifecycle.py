"""The lease life cycle, decided by pure functions: every transition and every race, no emulator.

Each test replays what Firestore would see, on an in-memory document (devkit/memdoc.py):
a step reads, decides and writes; a step that decided from a stale read is what a failed
compare-and-set precondition sends back to read and decide again. The emulator tests in
tests/integration prove the same rules end to end.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from core.contract import TRANSITIONS, ErrorInfo, JobDoc, JobStatus, Prepared, Progress, Timings
from core.lifecycle import (
    ClaimOutcome,
    Ending,
    LeaseLost,
    decide_claim,
    decide_fan_out,
    decide_finish,
    decide_heartbeat,
)
from core.recovery import decide_recover, decide_transition
from core.spec import PipelineModel, PipelineSpec
from core.work import WorkRef
from devkit.memdoc import MemDoc

LEASE = 10.0
MAX = 3
JOB = WorkRef("j1")


def queued(**extra: Any) -> MemDoc:
    return MemDoc({"uid": "u1", "pipeline": "p", "inputs": {}, "status": "queued", **extra})


def claim(doc: MemDoc, owner: str, ref: WorkRef = JOB, **kw: Any) -> Any:
    return doc.do(
        lambda job: decide_claim(
            job, ref, owner=owner, now=doc.now, lease_seconds=LEASE, max_attempts=MAX, **kw
        )
    )


def beat(doc: MemDoc, owner: str, attempt: int, ref: WorkRef = JOB, progress: Progress | None = None) -> bool:
    return doc.do(
        lambda job: decide_heartbeat(
            job, ref, owner=owner, attempt=attempt, now=doc.now, lease_seconds=LEASE, progress=progress
        )
    )


def finish(
    doc: MemDoc, owner: str | None, attempt: int, ending: Ending, ref: WorkRef = JOB, join: Any = None
) -> Any:
    return doc.do(lambda job: decide_finish(job, ref, owner=owner, attempt=attempt, ending=ending, join=join))


def recover(doc: MemDoc, ref: WorkRef = JOB) -> JobStatus | None:
    return doc.do(lambda job: decide_recover(job, ref, now=doc.now, max_attempts=MAX))


def status(doc: MemDoc) -> str:
    assert doc.data is not None
    return str(doc.data["status"])


# -- claiming a job --------------------------------------------------------------------------------


def test_a_queued_job_is_claimed_with_a_lease_and_its_first_attempt() -> None:
    doc = queued()
    result = claim(doc, "w1")
    assert result.outcome is ClaimOutcome.CLAIMED and result.attempt == 1
    assert doc.data is not None
    assert doc.data["status"] == "running" and doc.data["attempt"] == 1
    assert doc.data["lease"]["owner"] == "w1"
    assert (doc.data["lease"]["expiresAt"] - doc.now).total_seconds() == LEASE
    assert doc.data["startedAt"] == doc.now and doc.data["progress"]["stage"] == "starting"


@pytest.mark.parametrize(
    ("data", "outcome"),
    [
        (None, ClaimOutcome.NOT_FOUND),
        ({"uid": "u", "pipeline": "p", "status": "succeeded"}, ClaimOutcome.FINAL),
        ({"uid": "u", "pipeline": "p", "status": "rejected"}, ClaimOutcome.FINAL),
        ({"uid": "u", "pipeline": "p", "status": "pending"}, ClaimOutcome.NOT_QUEUED),
        ({"uid": "u", "pipeline": "p"}, ClaimOutcome.NOT_QUEUED),  # a client document without status
        ({"uid": "u", "pipeline": "other", "status": "queued"}, ClaimOutcome.MISROUTED),
    ],
)
def test_deliveries_that_must_not_run_write_nothing(
    data: dict[str, Any] | None, outcome: ClaimOutcome
) -> None:
    doc = MemDoc(data)
    assert claim(doc, "w1", pipeline="p").outcome is outcome
    assert doc.writes == 0


def test_a_duplicate_delivery_while_the_job_runs_is_sent_back_and_changes_nothing() -> None:
    doc = queued()
    claim(doc, "w1")
    before = dict(doc.data or {})
    assert claim(doc, "w2").outcome is ClaimOutcome.RUNNING_ELSEWHERE
    assert doc.data == before


def test_two_deliveries_racing_from_the_same_read_run_the_job_once() -> None:
    doc = queued()
    stale = doc.read()
    first = decide_claim(stale, JOB, owner="w1", now=doc.now, lease_seconds=LEASE, max_attempts=MAX)
    second = decide_claim(stale, JOB, owner="w2", now=doc.now, lease_seconds=LEASE, max_attempts=MAX)
    assert first.result.outcome is second.result.outcome is ClaimOutcome.CLAIMED
    doc.commit(first)
    # The second write's precondition fails (the document changed): it reads and decides again.
    assert claim(doc, "w2").outcome is ClaimOutcome.RUNNING_ELSEWHERE
    assert doc.data is not None and doc.data["lease"]["owner"] == "w1"


def test_after_the_lease_expires_another_worker_takes_over_and_the_first_can_commit_nothing() -> None:
    doc = queued()
    claim(doc, "w1")
    doc.tick(LEASE + 1)
    taken = claim(doc, "w2")
    assert taken.outcome is ClaimOutcome.CLAIMED and taken.attempt == 2
    # The first worker wakes up (a zombie): its heartbeat and its commit are both refused.
    with pytest.raises(LeaseLost):
        beat(doc, "w1", 1)
    with pytest.raises(LeaseLost):
        finish(doc, "w1", 1, Ending(JobStatus.SUCCEEDED, outputs={"text": "stale"}))
    assert finish(doc, "w2", 2, Ending(JobStatus.SUCCEEDED, outputs={"text": "fresh"})) is JobStatus.SUCCEEDED
    assert doc.data is not None and doc.data["outputs"] == {"text": "fresh"}


def test_a_heartbeat_renews_the_lease_and_reports_a_cancel_request() -> None:
    doc = queued()
    claim(doc, "w1")
    doc.tick(LEASE - 1)
    assert beat(doc, "w1", 1, progress=Progress(fraction=0.5, stage="decoding")) is False
    assert doc.data is not None
    assert (doc.data["lease"]["expiresAt"] - doc.now).total_seconds() == LEASE
    assert doc.data["progress"] == {"fraction": 0.5, "stage": "decoding", "updatedAt": doc.now}
    doc.data["cancelRequested"] = True
    assert beat(doc, "w1", 1) is True


def test_cancel_while_running_ends_the_job_cancelled_without_an_error() -> None:
    doc = queued()
    claim(doc, "w1")
    assert finish(doc, "w1", 1, Ending(JobStatus.CANCELLED)) is JobStatus.CANCELLED
    assert doc.data is not None
    assert doc.data["status"] == "cancelled" and "lease" not in doc.data and "error" not in doc.data
    assert doc.data["finishedAt"] == doc.now


def test_cancel_before_the_job_starts_ends_it_at_the_claim() -> None:
    doc = queued(cancelRequested=True)
    result = claim(doc, "w1")
    assert result.outcome is ClaimOutcome.CANCELLED and result.ended is JobStatus.CANCELLED
    assert status(doc) == "cancelled"


def test_a_shutdown_hands_the_job_back_without_spending_an_attempt() -> None:
    doc = queued()
    claim(doc, "w1")
    preempted = ErrorInfo(code="preempted", message="shutting down", retryable=True)
    assert finish(doc, "w1", 1, Ending(JobStatus.QUEUED, error=preempted, refund=True)) is None
    assert doc.data is not None
    assert doc.data["status"] == "queued" and doc.data["attempt"] == 0 and "lease" not in doc.data
    assert claim(doc, "w2").attempt == 1


def test_retryable_failures_spend_attempts_until_the_claim_gives_up_naming_the_last_error() -> None:
    doc = queued()
    for attempt in range(1, MAX + 1):
        assert claim(doc, "w1").attempt == attempt
        flaky = ErrorInfo(code="transient", message=f"blip {attempt}", retryable=True)
        finish(doc, "w1", attempt, Ending(JobStatus.QUEUED, error=flaky))
        assert status(doc) == "queued"
    result = claim(doc, "w1")
    assert result.outcome is ClaimOutcome.ATTEMPTS_EXHAUSTED and result.ended is JobStatus.FAILED
    assert doc.data is not None
    assert doc.data["error"]["code"] == "attempts_exhausted"
    assert f"blip {MAX}" in doc.data["error"]["message"] and doc.data["error"]["retryable"] is False


def test_success_records_outputs_and_clears_earlier_errors() -> None:
    doc = queued(lastError={"code": "transient", "message": "m", "retryable": True})
    claim(doc, "w1")
    ending = Ending(
        JobStatus.SUCCEEDED,
        outputs={"text": "hi"},
        progress=Progress(fraction=1.0, stage="done"),
        timings=Timings(total=1.5),
        runtime={"worker": "w1"},
    )
    assert finish(doc, "w1", 1, ending) is JobStatus.SUCCEEDED
    assert doc.data is not None
    assert doc.data["outputs"] == {"text": "hi"} and doc.data["timings"] == {"total": 1.5}
    assert "lastError" not in doc.data and "error" not in doc.data and "lease" not in doc.data
    assert doc.data["progress"]["fraction"] == 1.0 and doc.data["runtime"] == {"worker": "w1"}


def test_a_running_job_cannot_be_finished_as_rejected() -> None:
    doc = queued()
    claim(doc, "w1")
    with pytest.raises(ValueError, match="cannot become"):
        finish(doc, "w1", 1, Ending(JobStatus.REJECTED))


# -- the sweeper -----------------------------------------------------------------------------------


def test_recover_leaves_a_live_lease_alone_and_requeues_an_expired_one() -> None:
    doc = queued()
    claim(doc, "w1")
    assert recover(doc) is None and doc.writes == 1
    doc.tick(LEASE + 1)
    assert recover(doc) is JobStatus.QUEUED
    assert doc.data is not None
    assert doc.data["lastError"]["code"] == "worker_lost" and "w1" in doc.data["lastError"]["message"]
    assert recover(doc) is None  # not running any more


def test_recover_fails_a_job_whose_attempts_are_spent_and_cancels_one_that_was_asked_to() -> None:
    spent = queued()
    for _ in range(MAX):
        claim(spent, "w1")
        spent.tick(LEASE + 1)
        if _ < MAX - 1:
            recover(spent)
    assert recover(spent) is JobStatus.FAILED
    assert spent.data is not None and spent.data["error"]["code"] == "worker_lost"
    assert "gave up after 3 attempts" in spent.data["error"]["message"]

    asked = queued()
    claim(asked, "w1")
    assert asked.data is not None
    asked.data["cancelRequested"] = True
    asked.tick(LEASE + 1)
    assert recover(asked) is JobStatus.CANCELLED


# -- moves that are not an attempt's ---------------------------------------------------------------


@pytest.mark.parametrize("current", list(JobStatus))
@pytest.mark.parametrize("to", list(JobStatus))
def test_every_transition_is_allowed_exactly_as_the_contract_says(current: JobStatus, to: JobStatus) -> None:
    job = JobDoc(uid="u", pipeline="p", status=current)
    decision = decide_transition(job, to)
    assert (decision.patch is not None) is (to in TRANSITIONS[current])
    if decision.patch is not None and to.is_final:
        assert {"finishedAt", "lease"} <= set(decision.patch.to_dict())


def test_a_transition_can_be_limited_to_some_current_states() -> None:
    job = JobDoc(uid="u", pipeline="p", status=JobStatus.QUEUED)
    assert decide_transition(job, JobStatus.FAILED, allowed_from=[JobStatus.PENDING]).patch is None
    assert decide_transition(None, JobStatus.FAILED).result is None


# -- multi-part jobs -------------------------------------------------------------------------------


class _In(PipelineModel):
    pass


def _join_calls() -> tuple[list[dict[str, Any]], Any]:
    calls: list[dict[str, Any]] = []

    def join(job: JobDoc) -> Ending:
        parts = job.parts or {}
        calls.append({k: p.status for k, p in parts.items()})
        if any(p.status is JobStatus.CANCELLED for p in parts.values()):
            return Ending(JobStatus.CANCELLED, clear_outputs=True)
        failed = [k for k, p in parts.items() if p.status is JobStatus.FAILED]
        if failed:
            return Ending(
                JobStatus.FAILED, error=ErrorInfo(code="failed", message=f"part {failed[0]} failed")
            )
        return Ending(JobStatus.SUCCEEDED, outputs={k: (p.outputs or {}) for k, p in parts.items()})

    return calls, join


def fanned_out(parts: tuple[str, ...] = ("a", "b")) -> MemDoc:
    doc = queued()
    claim(doc, "w0")
    doc.do(
        partial(
            decide_fan_out,
            ref=JOB,
            owner="w0",
            attempt=1,
            prepared=Prepared(files={"x": "gs://b/x"}, state={"token": 1}),
            parts=parts,
            timings=Timings(download=0.1),
        )
    )
    return doc


def test_fan_out_queues_every_part_and_the_job_keeps_running_without_a_lease() -> None:
    doc = fanned_out()
    assert doc.data is not None
    assert doc.data["status"] == "running" and "lease" not in doc.data
    assert {k: v["status"] for k, v in doc.data["parts"].items()} == {"a": "queued", "b": "queued"}
    assert doc.data["progress"]["fraction"] == pytest.approx(0.3)
    # A duplicate of the job's own message finds it fanned out and does nothing.
    assert claim(doc, "w9").outcome is ClaimOutcome.FANNED_OUT


def test_only_the_owner_of_the_prepare_step_can_fan_out() -> None:
    doc = queued()
    claim(doc, "w1")
    with pytest.raises(LeaseLost):
        doc.do(
            partial(
                decide_fan_out,
                ref=JOB,
                owner="w2",
                attempt=1,
                prepared=Prepared(),
                parts=["a"],
                timings=Timings(),
            )
        )


def test_the_last_part_to_end_joins_once_and_ends_the_job_in_the_same_write() -> None:
    calls, join = _join_calls()
    doc = fanned_out()
    a, b = WorkRef("j1", "a"), WorkRef("j1", "b")
    assert claim(doc, "w1", a, join=join).attempt == 1
    assert claim(doc, "w2", b, join=join).attempt == 1
    assert beat(doc, "w1", 1, a, Progress(fraction=0.5, stage="half")) is False
    assert doc.data is not None and doc.data["progress"]["fraction"] == pytest.approx(0.3 + 0.7 * 0.25)
    assert finish(doc, "w1", 1, Ending(JobStatus.SUCCEEDED, outputs={"v": "a"}), a, join) is None
    assert calls == [] and status(doc) == "running"
    writes = doc.writes
    assert (
        finish(doc, "w2", 1, Ending(JobStatus.SUCCEEDED, outputs={"v": "b"}), b, join) is JobStatus.SUCCEEDED
    )
    assert doc.writes == writes + 1 and len(calls) == 1
    assert doc.data["status"] == "succeeded" and doc.data["outputs"] == {"a": {"v": "a"}, "b": {"v": "b"}}


def test_two_parts_finishing_from_the_same_read_still_join_exactly_once() -> None:
    calls, join = _join_calls()
    doc = fanned_out()
    a, b = WorkRef("j1", "a"), WorkRef("j1", "b")
    claim(doc, "w1", a, join=join)
    claim(doc, "w2", b, join=join)
    stale = doc.read()
    end_a = decide_finish(stale, a, owner="w1", attempt=1, ending=Ending(JobStatus.SUCCEEDED), join=join)
    end_b = decide_finish(stale, b, owner="w2", attempt=1, ending=Ending(JobStatus.SUCCEEDED), join=join)
    assert end_a.result is None and end_b.result is None  # each saw the other still running
    doc.commit(end_a)
    # b's precondition fails; it reads again, now sees a ended, and joins.
    assert finish(doc, "w2", 1, Ending(JobStatus.SUCCEEDED), b, join) is JobStatus.SUCCEEDED
    assert len(calls) == 1
    # A duplicate delivery of either part afterwards finds the job final.
    assert claim(doc, "w3", a, join=join).outcome is ClaimOutcome.FINAL


def test_a_part_whose_attempts_are_spent_fails_the_job_naming_it() -> None:
    calls, join = _join_calls()
    doc = fanned_out()
    a, b = WorkRef("j1", "a"), WorkRef("j1", "b")
    claim(doc, "w1", b, join=join)
    finish(doc, "w1", 1, Ending(JobStatus.SUCCEEDED), b, join)
    for attempt in range(1, MAX + 1):
        assert claim(doc, "w1", a, join=join).attempt == attempt
        finish(
            doc, "w1", attempt, Ending(JobStatus.QUEUED, error=ErrorInfo(code="t", message="blip")), a, join
        )
    result = claim(doc, "w1", a, join=join)
    assert result.outcome is ClaimOutcome.ATTEMPTS_EXHAUSTED and result.ended is JobStatus.FAILED
    assert doc.data is not None
    assert doc.data["parts"]["a"]["error"]["code"] == "attempts_exhausted"
    assert doc.data["status"] == "failed" and "part a failed" in doc.data["error"]["message"]
    assert calls == [{"a": JobStatus.FAILED, "b": JobStatus.SUCCEEDED}]  # joined once, at that claim


def test_cancelling_a_fanned_out_job_ends_it_cancelled_when_its_parts_stop() -> None:
    calls, join = _join_calls()
    doc = fanned_out()
    a, b = WorkRef("j1", "a"), WorkRef("j1", "b")
    claim(doc, "w1", a, join=join)
    finish(doc, "w1", 1, Ending(JobStatus.SUCCEEDED, outputs={"v": 1}), a, join)
    assert doc.data is not None
    doc.data["cancelRequested"] = True
    result = claim(doc, "w2", b, join=join)
    assert result.outcome is ClaimOutcome.CANCELLED and result.ended is JobStatus.CANCELLED
    assert doc.data["status"] == "cancelled" and "outputs" not in doc.data
    assert len(calls) == 1


def test_a_part_whose_worker_died_is_recovered_and_taken_over() -> None:
    _, join = _join_calls()
    doc = fanned_out()
    a = WorkRef("j1", "a")
    claim(doc, "w1", a, join=join)
    assert recover(doc, a) is None
    doc.tick(LEASE + 1)
    assert recover(doc, JOB) is None  # the job itself has no lease: its parts are recovered
    assert recover(doc, a) is JobStatus.QUEUED
    assert doc.data is not None and doc.data["parts"]["a"]["error"]["code"] == "worker_lost"
    assert claim(doc, "w2", a, join=join).attempt == 2
    with pytest.raises(LeaseLost):
        finish(doc, "w1", 1, Ending(JobStatus.SUCCEEDED), a, join)


def test_ending_a_part_that_no_worker_holds_is_a_no_op_once_it_ended() -> None:
    _, join = _join_calls()
    doc = fanned_out()
    a = WorkRef("j1", "a")
    claim(doc, "w1", a, join=join)
    finish(doc, "w1", 1, Ending(JobStatus.SUCCEEDED), a, join)
    writes = doc.writes
    assert finish(doc, None, 1, Ending(JobStatus.CANCELLED), a, join) is None
    assert doc.writes == writes


def test_shards_decided_at_prepare_time_are_parts_with_keys_on_their_lanes_route() -> None:
    spec = PipelineSpec(
        name="p", inputs=_In, outputs=_In, config=_In, loader="x:y", parts=("chunk", "summary"), join="x:j"
    )
    keys = spec.part_keys({"chunk": 3})
    assert keys == ["chunk-0", "chunk-1", "chunk-2", "summary"]
    assert {WorkRef("j1", k).lane for k in keys} == {"chunk", "summary"}
    with pytest.raises(ValueError, match="no lanes"):
        spec.part_keys({"other": 2})
    calls, join = _join_calls()
    doc = fanned_out(tuple(keys))
    for key in keys:
        ref = WorkRef("j1", key)
        claim(doc, "w1", ref, join=join)
        finish(doc, "w1", 1, Ending(JobStatus.SUCCEEDED, outputs={"k": key}), ref, join)
    assert status(doc) == "succeeded" and len(calls) == 1
