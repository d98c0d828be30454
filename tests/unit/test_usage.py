"""What a job cost: batch shares, the usage record, budgets in GPU time, the maximum run time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core.contract import JobDoc, JobStatus, Lease, Usage
from core.decisions import Ending
from core.errors import PermanentError
from core.lifecycle import decide_finish
from core.quota import Ledger, QuotaPolicy, decide_admission
from core.spec import RunContext, RunResult
from core.usage import USAGE_FIELDS, DayUsage, PipelineDay, apportion, log_line, log_record, rollup
from core.work import WorkRef
from gpu_service.batching import Batcher
from gpu_service.heartbeat import Heartbeat

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
TODAY = "2026-12-06"


# -- batch shares -----------------------------------------------------------------------------------


def test_a_batch_is_split_by_work_and_the_shares_sum_to_its_time() -> None:
    shares = apportion(3.0, [1.0, 2.0, 3.0])
    assert shares == pytest.approx([0.5, 1.0, 1.5])
    assert sum(shares) == 3.0  # exactly: the last share takes the rounding remainder
    odd = apportion(0.1, [1.0] * 7)
    assert sum(odd) == 0.1


def test_a_work_that_is_not_a_positive_number_counts_as_one_unit() -> None:
    assert apportion(4.0, [0.0, -5.0, float("nan"), 1.0]) == pytest.approx([1.0, 1.0, 1.0, 1.0])


class _Weighed:
    """A batching stand-in whose jobs say their work (``n``); each call takes a little time."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, inputs: Any, ctx: RunContext) -> RunResult[Any]:
        raise AssertionError("called through run_batch")

    def batch_key(self, inputs: Any) -> Any:
        return 0

    def batch_work(self, inputs: Any) -> float:
        return float(inputs["n"])

    def run_batch(self, items: list[tuple[Any, RunContext]]) -> list[Any]:
        self.calls += 1
        time.sleep(0.05)
        return [RunResult(outputs=i["n"]) for i, _ in items]  # type: ignore[arg-type]


def test_each_job_of_a_batched_call_is_charged_its_share_and_the_shares_sum_to_the_call(
    tmp_path: Path,
) -> None:
    stand = _Weighed()
    batcher = Batcher("weighed", stand, max_batch=3, max_wait_ms=500)  # type: ignore[arg-type]
    contexts = [RunContext(job_id=f"j{n}", workdir=tmp_path) for n in (1, 2, 3)]
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(batcher.submit, {"n": n}, ctx) for n, ctx in zip((1, 2, 3), contexts, strict=True)
        ]
        for f in futures:
            f.result(timeout=10)
    assert stand.calls == 1
    meters = [c.meter for c in contexts]
    call = meters[0]["batch_seconds"]
    assert all(m["batch_seconds"] == call and m["batch_size"] == 3 for m in meters)
    assert sum(m["gpu_seconds"] for m in meters) == pytest.approx(call, rel=1e-9)
    # by work: the job of work 3 pays three times the job of work 1
    assert meters[2]["gpu_seconds"] == pytest.approx(3 * meters[0]["gpu_seconds"])


# -- the usage record, the roll-up and the log line ---------------------------------------------------


def _running(attempt: int = 1) -> JobDoc:
    return JobDoc(
        uid="u1",
        pipeline="transcribe",
        status=JobStatus.RUNNING,
        attempt=attempt,
        lease=Lease(owner="w", expires_at=NOW),
    )


def test_the_usage_is_written_in_the_commit_that_ends_the_job() -> None:
    usage = Usage(queue_seconds=1.5, load_seconds=0.0, gpu_seconds=2.25)
    decision = decide_finish(
        _running(), WorkRef("j1"), owner="w", attempt=1, ending=Ending(JobStatus.SUCCEEDED, usage=usage)
    )
    assert decision.result is JobStatus.SUCCEEDED and decision.patch is not None
    written = decision.patch.to_dict()
    assert written["status"] == JobStatus.SUCCEEDED
    assert written["usage"] == {"queueSeconds": 1.5, "loadSeconds": 0.0, "gpuSeconds": 2.25}


def test_the_roll_up_of_jobs_is_their_sum() -> None:
    usages = [Usage(gpu_seconds=g, queue_seconds=q) for g, q in ((1.0, 0.5), (2.5, 0.25), (0.125, 0.0))]
    day: dict[str, float] = {}
    for u in usages:
        for path, amount in rollup(u, "tts").items():
            day[path] = day.get(path, 0) + amount
    assert day["jobs"] == 3 and day["gpuSeconds"] == 3.625 and day["queueSeconds"] == 0.75
    assert day["pipelines.tts.gpuSeconds"] == 3.625 and day["pipelines.tts.jobs"] == 3


def test_the_usage_log_line_has_the_same_fields_for_every_job() -> None:
    import json

    plain = log_record("j1", _running(), JobStatus.SUCCEEDED, Usage(gpu_seconds=1.0), day=TODAY)
    failed = log_record(
        "j2", _running(), JobStatus.FAILED, Usage(), day=TODAY, error_code="max_run_time_exceeded"
    )
    for record in (plain, failed):
        line = json.loads(log_line(record, NOW))
        assert line["kind"] == "gpujobs.usage" and line["severity"] == "INFO"
        assert set(USAGE_FIELDS) <= set(line)
    assert json.loads(log_line(failed, NOW))["errorCode"] == "max_run_time_exceeded"


# -- budgets in GPU time ------------------------------------------------------------------------------


def _ledger(gpu: float, jobs: int, active: dict[str, str] | None = None) -> Ledger:
    day = DayUsage(jobs=jobs, gpu_seconds=gpu, pipelines={"tts": PipelineDay(jobs=jobs, gpu_seconds=gpu)})
    return Ledger(day=TODAY, daily={"*": jobs, "tts": jobs}, active=active or {}, usage={TODAY: day})


def test_a_job_that_would_pass_the_days_gpu_budget_is_rejected_up_front_with_a_retry_time() -> None:
    policy = QuotaPolicy(gpu_seconds_daily=10.0)
    # 4 jobs used 8 s today: the next one is estimated at the mean, 2 s, which just fits
    fits = decide_admission(_ledger(8.0, 4), policy, job_id="j5", pipeline="tts", now=NOW)
    assert fits.admitted
    over = decide_admission(_ledger(9.0, 4), policy, job_id="j5", pipeline="tts", now=NOW)
    assert not over.admitted and over.error is not None
    assert over.error.code == "budget_exceeded"
    assert over.error.retry_after_seconds == 12 * 3600 + 1  # nothing in flight: after midnight UTC


def test_unfinished_jobs_count_at_their_estimate_and_the_retry_is_when_one_ends() -> None:
    policy = QuotaPolicy(gpu_seconds_daily=10.0, retry_after_seconds=30)
    decision = decide_admission(
        _ledger(4.0, 2, active={"a": "tts", "b": "tts"}), policy, job_id="c", pipeline="tts", now=NOW
    )
    # used 4 + 2 unfinished x 2 s + this one 2 s = 10: fits; a third unfinished one would not
    assert decision.admitted
    decision = decide_admission(
        _ledger(4.0, 2, active={"a": "tts", "b": "tts", "c": "tts"}),
        policy,
        job_id="d",
        pipeline="tts",
        now=NOW,
    )
    assert not decision.admitted and decision.error is not None
    assert decision.error.code == "budget_exceeded" and decision.error.retry_after_seconds == 30


def test_a_first_job_is_estimated_by_the_pipelines_declared_estimate() -> None:
    policy = QuotaPolicy.model_validate(
        {"gpu_seconds_daily": 100, "pipelines": {"t2v": {"gpu_seconds_estimate": 150}}}
    )
    decision = decide_admission(Ledger(), policy, job_id="v1", pipeline="t2v", now=NOW)
    assert not decision.admitted and decision.error is not None and decision.error.code == "budget_exceeded"
    assert decide_admission(Ledger(), policy, job_id="t1", pipeline="tts", now=NOW).admitted


def test_a_sign_in_tier_has_its_own_gpu_budget() -> None:
    policy = QuotaPolicy.model_validate(
        {"gpu_seconds_daily": 1000, "tiers": {"anonymous": {"max_daily": None, "gpu_seconds_daily": 5}}}
    )
    ledger = _ledger(6.0, 3)
    assert decide_admission(
        ledger, policy.for_provider("password"), job_id="x", pipeline="tts", now=NOW
    ).admitted
    anon = decide_admission(ledger, policy.for_provider("anonymous"), job_id="x", pipeline="tts", now=NOW)
    assert not anon.admitted and anon.error is not None and anon.error.code == "budget_exceeded"


def test_yesterdays_use_does_not_count_today() -> None:
    policy = QuotaPolicy(gpu_seconds_daily=10.0)
    yesterday = _ledger(50.0, 5).model_copy(update={"day": "2026-12-05"})
    yesterday.usage = {"2026-12-05": yesterday.usage[TODAY]}
    assert decide_admission(yesterday, policy, job_id="j", pipeline="tts", now=NOW).admitted


# -- the maximum run time -----------------------------------------------------------------------------


def test_an_attempt_past_its_maximum_run_time_stops_at_its_next_checkpoint_with_a_named_error() -> None:
    beat = Heartbeat(
        "job j",
        lambda progress: False,
        lease_seconds=60,
        min_interval=0.0,
        draining=threading.Event(),
        max_run_seconds=0.05,
    )
    beat.check()  # within the limit: runs on
    time.sleep(0.1)
    with pytest.raises(PermanentError) as stopped:
        beat.report(0.5, "working")
    assert stopped.value.code == "max_run_time_exceeded"


def test_the_maximum_run_time_is_per_pipeline_with_a_default() -> None:
    from infra.settings import Settings

    settings = Settings(max_run_seconds=600, pipeline_max_run_seconds={"t2v": 1800})
    assert settings.max_run_seconds_for("t2v") == 1800
    assert settings.max_run_seconds_for("tts") == 600


# -- the queue deadline -------------------------------------------------------------------------------


def test_a_job_still_queued_at_its_deadline_is_cancelled_rather_than_run_late() -> None:
    from datetime import timedelta

    from core.decisions import ClaimOutcome
    from core.lifecycle import decide_claim

    def claim(job: JobDoc) -> Any:
        return decide_claim(job, WorkRef("j"), owner="w", now=NOW, lease_seconds=60, max_attempts=3)

    late = JobDoc(uid="u1", pipeline="tts", status=JobStatus.QUEUED, deadline=NOW - timedelta(seconds=1))
    decision = claim(late)
    assert decision.result.outcome is ClaimOutcome.CANCELLED and decision.patch is not None
    written = decision.patch.to_dict()
    assert written["status"] == JobStatus.CANCELLED and written["error"]["code"] == "deadline_passed"
    in_time = late.model_copy(update={"deadline": NOW + timedelta(minutes=5)})
    assert claim(in_time).result.outcome is ClaimOutcome.CLAIMED
    # a job that already started (a retry after a crash) is not stopped by the queue deadline
    started = late.model_copy(update={"started_at": NOW - timedelta(minutes=1)})
    assert claim(started).result.outcome is ClaimOutcome.CLAIMED


def test_a_multi_part_jobs_usage_sums_its_prepare_step_and_each_parts_own() -> None:
    from core.contract import PartState, Timings
    from core.usage import parts_usage

    job = JobDoc(
        uid="u",
        pipeline="video",
        timings=Timings(queue=0.5, load=2.0, inference=1.25),
        parts={
            "transcribe": PartState(
                status=JobStatus.SUCCEEDED,
                usage=Usage(gpu_seconds=3.5, load_seconds=1.0, model="whisper-tiny"),
            ),
            "ocr": PartState(status=JobStatus.FAILED, usage=Usage(gpu_seconds=0.75)),
            "never_ran": PartState(status=JobStatus.CANCELLED),
        },
    )
    usage = parts_usage(job)
    assert usage.gpu_seconds == pytest.approx(1.25 + 3.5 + 0.75)
    assert usage.load_seconds == pytest.approx(3.0) and usage.queue_seconds == 0.5
    assert usage.model == "whisper-tiny"
