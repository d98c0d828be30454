"""Per-user quotas, decided by a pure function: caps, the day's roll-over, pruning and retries."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.quota import ALL, Ledger, QuotaLimits, QuotaPolicy, decide_admission, needs_pruning

NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def admit_many(policy: QuotaPolicy, n: int, pipeline: str = "transcribe") -> tuple[Ledger, list[bool]]:
    ledger, outcomes = Ledger(), []
    for i in range(n):
        admission = decide_admission(ledger, policy, job_id=f"j{i}", pipeline=pipeline, now=NOON)
        ledger = admission.ledger
        outcomes.append(admission.admitted)
    return ledger, outcomes


def test_the_unfinished_cap_admits_exactly_that_many() -> None:
    ledger, outcomes = admit_many(QuotaPolicy(max_unfinished=3), 5)
    assert outcomes == [True, True, True, False, False]
    assert sorted(ledger.active) == ["j0", "j1", "j2"]
    assert ledger.daily == {ALL: 3, "transcribe": 3}


def test_a_refusal_says_why_and_when_to_come_back() -> None:
    policy = QuotaPolicy(max_unfinished=1, retry_after_seconds=45)
    ledger, _ = admit_many(policy, 1)
    refused = decide_admission(ledger, policy, job_id="x", pipeline="transcribe", now=NOON)
    assert not refused.admitted and refused.error is not None
    assert refused.error.code == "quota_exceeded"
    assert (
        "1 of your jobs are not finished" in refused.error.message
        and "the limit is 1" in refused.error.message
    )
    assert refused.error.retry_after_seconds == 45
    assert refused.error.retryable is False


def test_finished_jobs_are_pruned_and_free_their_place() -> None:
    policy = QuotaPolicy(max_unfinished=2)
    ledger, _ = admit_many(policy, 2)
    assert needs_pruning(ledger, policy, "transcribe")
    admitted = decide_admission(
        ledger, policy, job_id="new", pipeline="transcribe", now=NOON, finished={"j0"}
    )
    assert admitted.admitted
    assert sorted(admitted.ledger.active) == ["j1", "new"]


def test_a_redelivered_job_is_admitted_again_without_counting_twice() -> None:
    policy = QuotaPolicy(max_unfinished=1)
    ledger, _ = admit_many(policy, 1)
    again = decide_admission(ledger, policy, job_id="j0", pipeline="transcribe", now=NOON)
    assert again.admitted
    assert again.ledger.daily[ALL] == 1


def test_the_daily_cap_resets_at_midnight_utc() -> None:
    policy = QuotaPolicy(max_unfinished=100, max_daily=2)
    ledger, outcomes = admit_many(policy, 3)
    assert outcomes == [True, True, False]
    refused = decide_admission(ledger, policy, job_id="late", pipeline="transcribe", now=NOON)
    assert refused.error is not None and "midnight UTC" in refused.error.message
    assert refused.error.retry_after_seconds == 12 * 3600 + 1
    tomorrow = datetime(2026, 12, 2, 0, 0, 1, tzinfo=UTC)
    assert decide_admission(ledger, policy, job_id="next", pipeline="transcribe", now=tomorrow).admitted


def test_a_pipeline_cap_is_tighter_than_the_users() -> None:
    policy = QuotaPolicy(max_unfinished=10, pipelines={"video": QuotaLimits(max_unfinished=1)})
    ledger = decide_admission(Ledger(), policy, job_id="v1", pipeline="video", now=NOON).ledger
    refused = decide_admission(ledger, policy, job_id="v2", pipeline="video", now=NOON)
    assert refused.error is not None and "video jobs are not finished" in refused.error.message
    assert decide_admission(ledger, policy, job_id="t1", pipeline="transcribe", now=NOON).admitted


def test_a_pipeline_daily_cap_counts_that_pipeline_only() -> None:
    policy = QuotaPolicy(max_unfinished=10, pipelines={"edit": QuotaLimits(max_daily=1)})
    ledger = decide_admission(Ledger(), policy, job_id="t", pipeline="transcribe", now=NOON).ledger
    ledger = decide_admission(ledger, policy, job_id="e1", pipeline="edit", now=NOON).ledger
    refused = decide_admission(ledger, policy, job_id="e2", pipeline="edit", now=NOON)
    assert refused.error is not None and "1 edit jobs today" in refused.error.message


def test_nothing_is_read_below_the_caps() -> None:
    policy = QuotaPolicy(max_unfinished=3, pipelines={"video": QuotaLimits(max_unfinished=1)})
    ledger, _ = admit_many(policy, 2)
    assert not needs_pruning(ledger, policy, "transcribe")
    assert needs_pruning(Ledger(active={"v": "video"}), policy, "video")


@pytest.mark.parametrize(
    "raw", ['{"max_unfinished": 0}', '{"max_unfinisehd": 3}', '{"pipelines": {"x": {"max_daily": -1}}}']
)
def test_the_setting_refuses_nonsense(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from infra.settings import Settings

    monkeypatch.setenv("QUOTAS", raw)
    with pytest.raises(ValidationError):
        Settings()


# -- tiers per sign-in provider ------------------------------------------------------------------


def test_anonymous_accounts_get_their_own_smaller_tier_by_default() -> None:
    policy = QuotaPolicy()
    anonymous = policy.for_provider("anonymous")
    assert (anonymous.max_unfinished, anonymous.max_daily) == (2, 100)
    assert (policy.max_unfinished, policy.max_daily) == (20, 1000)
    _, outcomes = admit_many(anonymous, 4)
    assert outcomes == [True, True, False, False]
    # Signed in any other way, or not known: the top-level caps.
    for provider in ("password", "google.com", None):
        assert policy.for_provider(provider) is policy


def test_a_tier_replaces_the_caps_including_per_pipeline_ones() -> None:
    policy = QuotaPolicy.model_validate(
        {
            "max_unfinished": 10,
            "pipelines": {"t2v": {"max_unfinished": 5}},
            "tiers": {
                "anonymous": {"max_unfinished": 3, "max_daily": None, "pipelines": {"t2v": {"max_daily": 1}}}
            },
        }
    )
    anonymous = policy.for_provider("anonymous")
    _, outcomes = admit_many(anonymous, 3, pipeline="t2v")
    assert outcomes == [True, False, False]
    _, outcomes = admit_many(policy.for_provider("password"), 6, pipeline="t2v")
    assert outcomes == [True] * 5 + [False]


def test_a_tier_that_is_not_allowed_refuses_with_sign_in_required() -> None:
    policy = QuotaPolicy.model_validate({"tiers": {"anonymous": {"allowed": False}}})
    refused = decide_admission(
        Ledger(), policy.for_provider("anonymous"), job_id="j", pipeline="transcribe", now=NOON
    )
    assert not refused.admitted and refused.error is not None
    assert refused.error.code == "sign_in_required"
    assert "anonymous account" in refused.error.message and "sign in" in refused.error.message
    assert refused.ledger.active == {}
    assert decide_admission(Ledger(), policy, job_id="j", pipeline="transcribe", now=NOON).admitted


def test_tiers_can_be_removed_and_are_read_from_the_setting() -> None:
    assert QuotaPolicy.model_validate({"tiers": {}}).for_provider("anonymous").max_unfinished == 20
    with pytest.raises(ValueError):
        QuotaPolicy.model_validate({"tiers": {"anonymous": {"max_unfinished": 2, "typo": 1}}})
