"""Which deliveries Pub/Sub must deliver again: one rule for the push route and the pull consumer."""

from __future__ import annotations

import pytest

from core.contract import ErrorInfo, JobStatus
from core.lifecycle import Claim, ClaimOutcome, Ending, described, redeliver

AGAIN = {ClaimOutcome.RUNNING_ELSEWHERE, ClaimOutcome.NOT_SERVED}


@pytest.mark.parametrize("outcome", list(ClaimOutcome))
def test_a_claim_is_delivered_again_only_while_another_attempt_or_service_may_take_it(
    outcome: ClaimOutcome,
) -> None:
    assert redeliver(Claim(outcome)) is (outcome in AGAIN)


@pytest.mark.parametrize("status", list(JobStatus))
def test_an_ending_is_delivered_again_only_when_it_goes_back_to_the_queue(status: JobStatus) -> None:
    assert redeliver(Ending(status)) is (status is JobStatus.QUEUED)


def test_the_word_for_a_delivery_names_the_claim_or_the_status_and_its_error() -> None:
    assert described(Claim(ClaimOutcome.FINAL)) == "final"
    assert described(Ending(JobStatus.SUCCEEDED)) == "succeeded"
    error = ErrorInfo(code="invalid_inputs", message="inputs are invalid: 1 errors")
    assert described(Ending(JobStatus.FAILED, error=error)) == "failed (invalid_inputs)"
