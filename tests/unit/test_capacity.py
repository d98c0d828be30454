"""Admission: a busy instance queues pushes fairly instead of turning them away, and the redriver
picks waiting work fairly; both pure enough to test without an emulator."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from core.contract import JobDoc, JobMessage, JobStatus, Lease, PartState
from core.lifecycle import Claim, ClaimOutcome
from gpu_service.capacity import Capacity
from gpu_service.redrive import Candidate, Redriver, candidates, fair_order


def _waiting(
    cap: Capacity, pipeline: str, uid: str, got: list[str], timeout: float = 5.0
) -> threading.Thread:
    def run() -> None:
        slot = cap.acquire(pipeline, uid, timeout)
        if slot is not None:
            got.append(uid)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _settle(cap: Capacity, waiting: int) -> None:
    deadline = time.monotonic() + 5
    while cap.waiting() != waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cap.waiting() == waiting


def test_a_free_slot_is_taken_at_once_and_a_full_instance_makes_pushes_wait() -> None:
    cap = Capacity(1)
    slot = cap.acquire("p", "u1", timeout=0)
    assert slot is not None and cap.free() == 0
    assert cap.acquire("p", "u2", timeout=0) is None  # no wait asked: refused now
    started = time.monotonic()
    assert cap.acquire("p", "u2", timeout=0.2) is None  # waited, then gave up
    assert time.monotonic() - started >= 0.2
    got: list[str] = []
    t = _waiting(cap, "p", "u2", got)
    _settle(cap, 1)
    cap.release(slot)
    t.join()
    assert got == ["u2"]


def test_the_next_slot_goes_to_the_user_with_fewest_running_units_not_the_first_in_line() -> None:
    cap = Capacity(2)
    busy = cap.acquire("p", "heavy", 0)
    other = cap.acquire("p", "light-done", 0)
    assert busy and other
    got: list[str] = []
    threads = [_waiting(cap, "p", "heavy", got)]
    _settle(cap, 1)
    threads.append(_waiting(cap, "p", "light", got))  # arrives later, but runs nothing yet
    _settle(cap, 2)
    cap.release(other)
    _settle(cap, 1)
    threads[1].join(timeout=5)
    assert got == ["light"]
    cap.release(busy)
    for t in threads:
        t.join()
    assert got == ["light", "heavy"]


def test_a_per_pipeline_cap_keeps_one_slow_pipeline_from_holding_every_slot() -> None:
    cap = Capacity(3, {"slow": 1})
    assert cap.try_acquire("slow", "u") is not None
    assert cap.try_acquire("slow", "u") is None
    assert cap.try_acquire("fast", "u") is not None
    assert cap.try_acquire("fast", "u") is not None
    assert cap.free() == 0


def test_the_redriver_never_takes_a_slot_a_push_is_waiting_for() -> None:
    cap = Capacity(1)
    slot = cap.acquire("p", "a", 0)
    assert slot is not None
    got: list[str] = []
    t = _waiting(cap, "p", "b", got)
    _settle(cap, 1)
    assert cap.try_acquire("p", "c") is None
    cap.release(slot)
    t.join()
    assert got == ["b"]


def test_busy_fraction_counts_slot_seconds() -> None:
    cap = Capacity(2)
    slot = cap.acquire("p", "u", 0)
    assert slot is not None
    time.sleep(0.2)
    cap.release(slot)
    time.sleep(0.2)
    stats = cap.stats()
    # one of two slots busy for about half the time
    assert 0.15 <= stats["busy_fraction"] <= 0.35
    assert stats["running"] == 0 and stats["slots"] == 2


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError):
        Capacity(0)


# -- the redriver's choice ---------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _job(
    pipeline: str, uid: str, age: float, status: JobStatus = JobStatus.QUEUED, **extra: object
) -> JobDoc:
    t = NOW - timedelta(seconds=age)
    fields: dict[str, object] = {"queued_at": t, "updated_at": t, **extra}
    return JobDoc(uid=uid, pipeline=pipeline, status=status, **fields)  # type: ignore[arg-type]


def test_only_work_that_waited_long_enough_on_served_pipelines_is_a_candidate() -> None:
    jobs = [
        ("old", _job("p", "u", 30)),
        ("fresh", _job("p", "u", 0.5)),  # the push path's
        ("other", _job("q", "u", 30)),  # not served here
        ("cancel", _job("p", "u", 30, cancel_requested=True)),
        (
            "fanned",
            _job(
                "p",
                "u",
                30,
                status=JobStatus.RUNNING,
                parts={"a": PartState(status=JobStatus.QUEUED), "b": PartState(status=JobStatus.RUNNING)},
            ),
        ),
    ]
    found = candidates(jobs, {"p"}, NOW, after=5)
    assert [(c.message.job_id, c.message.part) for c in found] == [("old", None), ("fanned", "a")]


class _Jobs:
    """The redriver's reads, of a fixed set of job documents, counted."""

    def __init__(self, jobs: dict[str, JobDoc]) -> None:
        self.jobs = jobs
        self.reads = 0

    def find_runnable(
        self, limit: int, parted: object = None, seen: object = None
    ) -> list[tuple[str, JobDoc]]:
        self.reads += 1
        queued = sorted(self.jobs.items(), key=lambda kv: kv[1].queued_at or NOW)
        return [(k, j) for k, j in queued if j.status is JobStatus.QUEUED][:limit]

    def find_queued_of_others(
        self, exclude: list[str], limit: int, seen: object = None
    ) -> list[tuple[str, JobDoc]]:
        self.reads += 1
        return [(k, j) for k, j in self.jobs.items() if j.uid not in exclude][:limit]

    def find_queued_of_pipelines(
        self, pipelines: object, limit: int, seen: object = None
    ) -> list[tuple[str, JobDoc]]:
        self.reads += 1
        queued = sorted(self.jobs.items(), key=lambda kv: kv[1].queued_at or NOW)
        return [(k, j) for k, j in queued if j.status is JobStatus.QUEUED and j.pipeline in pipelines][:limit]  # type: ignore[operator]


def _settle_free(cap: Capacity) -> None:
    deadline = time.monotonic() + 5
    while cap.free() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)


def _redriver(
    jobs: _Jobs, clock: list[datetime], monkeypatch: pytest.MonkeyPatch
) -> tuple[Redriver, list[str]]:
    import gpu_service.redrive as redrive

    ran: list[str] = []

    def process(message: JobMessage) -> Claim:
        ran.append(message.job_id)
        return Claim(ClaimOutcome.FINAL)

    monkeypatch.setattr(redrive, "utcnow", lambda: clock[0])
    worker = SimpleNamespace(
        jobs=jobs, catalog=SimpleNamespace(get=lambda name: None), draining=threading.Event(), process=process
    )
    return Redriver(worker, Capacity(1), ["p"], after_seconds=5, poll_seconds=5), ran  # type: ignore[arg-type]


def test_slots_that_free_before_any_queued_job_can_be_old_enough_read_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a burst every job's end frees a slot; while the queued jobs are all younger than the
    redrive age, a pass would read them only to find nothing: the first read says until when."""
    jobs = _Jobs({"young": _job("p", "u", 1), "younger": _job("p", "u", 0.5)})
    clock = [NOW]
    r, ran = _redriver(jobs, clock, monkeypatch)
    assert r.once() == 0 and jobs.reads == 1
    for _ in range(5):  # slots freed: no read
        clock[0] += timedelta(seconds=0.5)
        assert r.once() == 0
    assert jobs.reads == 1
    clock[0] = NOW + timedelta(seconds=4)  # the oldest queued job is now old enough
    assert r.once() == 1 and jobs.reads == 2
    _settle_free(r.capacity)
    assert ran == ["young"]
    jobs.jobs["new"] = _job("p", "u", -4)  # queued at +4 s: old enough at +9 s
    jobs.jobs.pop("young")
    jobs.jobs.pop("younger")
    assert r.once() == 0 and jobs.reads == 3
    clock[0] += timedelta(seconds=4.9)
    assert r.once() == 0 and jobs.reads == 3
    clock[0] += timedelta(seconds=0.2)
    assert r.once() == 1 and jobs.reads == 4  # read again as soon as it could be old enough: run


def test_a_full_read_holds_no_longer_than_the_jobs_it_could_not_see_allow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full oldest-queued read saw only the oldest queued jobs: one it did not see was queued
    after the last of them, but may have been written since (a retry) no later than that."""

    def retried(n: int) -> JobDoc:  # queued long ago, its last write (a retry) recent
        return _job("p", f"u{n}", 60, updated_at=NOW - timedelta(seconds=1))

    few = _Jobs({f"j{n}": retried(n) for n in range(3)})
    clock = [NOW]
    r, _ = _redriver(few, clock, monkeypatch)
    assert r.once() == 0 and r.once() == 0
    assert few.reads == 1  # every queued job seen: none is old enough for 4 s
    full = _Jobs({f"j{n}": retried(n) for n in range(10)})
    r, _ = _redriver(full, clock, monkeypatch)
    assert r.once() == 0
    reads = full.reads
    assert r.once() == 0 and full.reads > reads  # an unseen one may be old enough already: read again


def test_another_services_backlog_neither_hides_this_ones_work_nor_keeps_it_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The oldest queued jobs are another service's (a worker pool's long backlog): a full read of
    them looks again at this instance's own pipelines, and, with nothing of its own old enough,
    they do not hold it to a read every pass."""
    backlog = {f"pool-{n}": _job("q", f"u{n}", 600 - n) for n in range(10)}
    jobs = _Jobs({**backlog, "mine": _job("p", "v", 30)})
    clock = [NOW]
    r, ran = _redriver(jobs, clock, monkeypatch)
    assert r.once() == 1  # found behind the backlog, and run
    _settle_free(r.capacity)
    assert ran == ["mine"]
    jobs.jobs.pop("mine")
    jobs.jobs["young"] = _job("p", "v", 1)  # old enough in 4 s
    reads = jobs.reads
    assert r.once() == 0
    assert jobs.reads > reads
    reads = jobs.reads
    for _ in range(3):  # the backlog is old, but none of it will ever be this instance's
        clock[0] += timedelta(seconds=1)
        assert r.once() == 0
    assert jobs.reads == reads
    clock[0] += timedelta(seconds=1.1)
    assert r.once() == 1


def test_fair_order_alternates_users_then_a_users_pipelines_oldest_first() -> None:
    def c(job: str, pipeline: str, uid: str, age: float) -> Candidate:
        return Candidate(JobMessage(job_id=job, pipeline=pipeline), uid, NOW - timedelta(seconds=age))

    flood = [c(f"f{i}", "fast", "flooder", 100 - i) for i in range(5)]
    ordered = fair_order([*flood, c("lone", "fast", "someone", 1), c("slow1", "slow", "flooder", 50)])
    ids = [x.message.job_id for x in ordered]
    # the lone user's job is second, not behind the flooder's five; the slow pipeline is not last
    assert ids[:3] == ["f0", "lone", "slow1"]
    assert sorted(ids) == sorted(["lone", "slow1", *(f"f{i}" for i in range(5))])


def test_a_worker_whose_lease_ran_out_unrenewed_stops_at_its_next_checkpoint() -> None:
    # Firestore too slow to answer: no write ever says "lease lost", yet the worker must stop,
    # because by its own clock another worker may already have taken the job over.
    from core.lifecycle import LeaseLost
    from gpu_service.heartbeat import Heartbeat

    def stuck_beat(progress: object) -> bool:
        raise TimeoutError("Firestore did not answer")

    beat = Heartbeat("job j", stuck_beat, lease_seconds=0.5, min_interval=0.0, draining=threading.Event())
    beat.report(0.1, "working")  # within the lease: fine, although the write failed
    time.sleep(0.5)
    with pytest.raises(LeaseLost, match="ran out"):
        beat.report(0.2, "working")


# -- model turns: fewer units on the model than in flight -------------------------------------


def _stand_spec(name: str) -> object:
    from core.spec import PipelineModel, PipelineSpec

    return PipelineSpec(
        name=name, inputs=PipelineModel, outputs=PipelineModel, config=PipelineModel, loader="x:load"
    )


def test_with_fewer_model_turns_than_slots_units_take_turns_on_the_model_and_say_how_long_they_waited() -> (
    None
):
    from core.spec import Catalog
    from gpu_service.pool import ModelPool

    pool = ModelPool(Catalog(specs={}), model_concurrency=1)
    spec = _stand_spec("p")
    on_model: list[int] = []
    waits: list[float] = []
    stages: list[str] = []
    lock = threading.Lock()
    inside = 0

    def unit() -> None:
        nonlocal inside
        with pool.model_turn(spec, lambda fraction, stage: stages.append(stage)) as waited:  # type: ignore[arg-type]
            with lock:
                inside += 1
                on_model.append(inside)
            time.sleep(0.3)
            with lock:
                inside -= 1
        assert waited is not None
        waits.append(waited)

    threads = [threading.Thread(target=unit) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(on_model) == 1  # never two on the model
    assert sorted(waits)[0] < 0.15 and sorted(waits)[-1] >= 0.45  # the last waited for two runs
    assert "waiting for the model" in stages  # the job document says why it is not moving
    assert pool.gate is not None and pool.gate.running == 0
    assert 0.0 < pool.gate.stats()["busy_fraction"] <= 1.0


def test_a_unit_cancelled_while_waiting_for_the_model_leaves_without_taking_a_turn() -> None:
    from core.errors import Cancelled
    from core.spec import Catalog
    from gpu_service.pool import ModelPool

    pool = ModelPool(Catalog(specs={}), model_concurrency=1)
    spec = _stand_spec("p")
    holder_in, release = threading.Event(), threading.Event()

    def holder() -> None:
        with pool.model_turn(spec, lambda f, s: None):  # type: ignore[arg-type]
            holder_in.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    holder_in.wait(5)

    def cancelled(fraction: float, stage: str) -> None:
        raise Cancelled("the client cancelled the job")

    with pytest.raises(Cancelled), pool.model_turn(spec, cancelled):  # type: ignore[arg-type]
        pytest.fail("a cancelled unit must not reach the model")
    release.set()
    t.join()
    # No turn leaked: the next unit gets the model at once.
    with pool.model_turn(spec, lambda f, s: None) as waited:  # type: ignore[arg-type]
        assert waited is not None and waited < 0.3


def test_batching_pipelines_pass_the_model_gate_so_their_batches_can_form() -> None:
    from core.spec import Catalog
    from gpu_service.pool import ModelPool
    from infra.settings import Batching

    pool = ModelPool(Catalog(specs={}), {"b": Batching(max_batch=4, max_wait_ms=10)}, model_concurrency=1)
    with pool.model_turn(_stand_spec("b"), lambda f, s: None) as waited:  # type: ignore[arg-type]
        assert waited is None
        with pool.model_turn(_stand_spec("b"), lambda f, s: None) as again:  # type: ignore[arg-type]
            assert again is None


def test_more_model_turns_than_slots_is_refused_with_the_reason() -> None:
    from pydantic import ValidationError

    from infra.settings import Settings

    with pytest.raises(ValidationError, match="MODEL_CONCURRENCY 3 is larger than MAX_CONCURRENT_JOBS 2"):
        Settings(max_concurrent_jobs=2, model_concurrency=3)
    assert Settings(max_concurrent_jobs=6, model_concurrency=2).model_concurrency == 2


def test_a_pass_that_lost_its_claim_to_another_instance_reads_nothing_until_its_back_off_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Instances whose slots free together read the same oldest jobs and race for them: the
    losers do not read the same head again at once, in step, to lose again."""
    import gpu_service.redrive as redrive

    jobs = _Jobs({"taken": _job("p", "u", 30)})
    clock = [NOW]
    r, _ = _redriver(jobs, clock, monkeypatch)
    lost: list[str] = []

    def process(message: JobMessage) -> Claim:
        lost.append(message.job_id)
        lease = Lease(owner="another-instance", expires_at=NOW + timedelta(seconds=30))
        return Claim(ClaimOutcome.RUNNING_ELSEWHERE, _job("p", "u", 30, JobStatus.RUNNING, lease=lease))

    r.worker.process = process  # type: ignore[method-assign]
    r.worker.owner = "this-instance"
    monkeypatch.setattr(redrive, "RACE_BACKOFF_SECONDS", 3600.0)
    monkeypatch.setattr(redrive.random, "uniform", lambda low, high: high)
    assert r.once() == 1 and jobs.reads == 1
    _settle_free(r.capacity)
    assert lost == ["taken"]
    assert r.once() == 0 and jobs.reads == 1  # backing off: no read
    r._backoff_until = 0.0  # the back-off ended
    assert r.once() == 1 and jobs.reads == 2
