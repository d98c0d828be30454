"""The caps on waiting requests and event streams: per user (429) and per instance (503), both
with Retry-After, and a place freed exactly once."""

from __future__ import annotations

import pytest

from api.errors import ApiError
from api.shedding import Gate


def test_past_a_users_cap_is_429_and_past_the_instances_is_503() -> None:
    gate = Gate("waits", per_user=2, overall=3, retry_after=7)
    gate.enter("alice")
    gate.enter("alice")
    with pytest.raises(ApiError) as mine:
        gate.enter("alice")
    assert (mine.value.status, mine.value.code, mine.value.retry_after) == (429, "too_many_requests", 7)
    gate.enter("bob")
    with pytest.raises(ApiError) as busy:
        gate.enter("carol")
    assert (busy.value.status, busy.value.code, busy.value.retry_after) == (503, "overloaded", 7)
    assert busy.value.response().headers["Retry-After"] == "7"


def test_a_place_is_freed_once() -> None:
    gate = Gate("streams", per_user=1, overall=5, retry_after=1)
    release = gate.enter("alice")
    release()
    release()
    assert gate.count() == 0
    with gate.hold("alice"):
        assert gate.count("alice") == 1
    gate.enter("alice")
    assert gate.count() == 1
