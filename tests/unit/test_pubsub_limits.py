"""Pub/Sub's limits are written once, in core/pubsub.py; every other check is held to them.

Terraform cannot import Python, so its ``validation`` blocks repeat the numbers: these tests read
them with python-hcl2's grammar (tools/tfcheck.py) and fail when one differs from the core's, or
when a new range appears that no core limit accounts for.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from core import pubsub
from core.spec import Delivery
from infra.topology import Subscription, Topic
from tools import tfcheck

MODULES = Path(__file__).resolve().parents[2] / "terraform" / "modules"

# `X >= LOW && X <= HIGH` in a condition, X an attribute path such as p.dead_letter.max_delivery_attempts
_RANGE = re.compile(r"(?P<x>[a-z_][\w.]*) >= (?P<low>\d+) && (?P=x) <= (?P<high>\d+)")
# `contains(["push", "pull"], p.mode)`
_MODES = re.compile(r"contains\(\[(?P<values>[^\]]*)\], [\w.]*\.mode\)")


def _validations(module: str, variable: str) -> list[tuple[str, str]]:
    """(condition, error_message) of each validation block of one variable of one module."""
    found: list[tuple[str, str]] = []
    for path in (MODULES / module).glob("*.tf"):
        for kind, labels, body in tfcheck.parse_hcl(path.read_text()).blocks:
            if kind == "variable" and labels == [variable]:
                for block_type, _, inner in body.blocks:
                    if block_type == "validation":
                        found.append((inner.attributes["condition"], inner.attributes["error_message"]))
    assert found, f"no validation blocks in variable {variable!r} of modules/{module}"
    return found


def _ranges(module: str, variable: str) -> dict[str, set[tuple[int, int]]]:
    """Every numeric range a variable's validations check, by the field it applies to (its last
    name: ``p.retry_policy.minimum_backoff_seconds`` -> ``minimum_backoff_seconds``), checking
    that each message states the same numbers."""
    ranges: dict[str, set[tuple[int, int]]] = {}
    for condition, message in _validations(module, variable):
        for m in _RANGE.finditer(condition):
            low, high = int(m["low"]), int(m["high"])
            key = m["x"].split(".", 1)[0] + "." + m["x"].rsplit(".", 1)[-1]
            ranges.setdefault(key, set()).add((low, high))
            assert f"between {low}" in message and str(high) in message, (condition, message)
    return ranges


def test_the_topology_modules_validations_are_the_core_limits() -> None:
    """A pipeline's settings (p.*, defaults and overrides alike) and a topic's (t.*)."""
    assert _ranges("topology", "topology") == {
        "p.ack_deadline_seconds": {pubsub.ACK_DEADLINE_SECONDS},
        "p.max_delivery_attempts": {pubsub.MAX_DELIVERY_ATTEMPTS},
        "p.minimum_backoff_seconds": {pubsub.BACKOFF_SECONDS},
        "p.maximum_backoff_seconds": {pubsub.BACKOFF_SECONDS},
        "p.message_retention_seconds": {pubsub.SUBSCRIPTION_RETENTION_SECONDS},
        "t.message_retention_seconds": {pubsub.TOPIC_RETENTION_SECONDS},
    }
    modes = [
        m["values"]
        for condition, _ in _validations("topology", "topology")
        for m in _MODES.finditer(condition)
    ]
    assert [tuple(v.strip().strip('"') for v in values.split(",")) for values in modes] == [pubsub.MODES]


def test_the_pubsub_modules_validations_are_the_core_limits() -> None:
    assert _ranges("pubsub", "subscriptions") == {
        "s.ack_deadline_seconds": {pubsub.ACK_DEADLINE_SECONDS},
        "s.max_delivery_attempts": {pubsub.MAX_DELIVERY_ATTEMPTS},
        "s.minimum_backoff_seconds": {pubsub.BACKOFF_SECONDS},
        "s.maximum_backoff_seconds": {pubsub.BACKOFF_SECONDS},
        "s.message_retention_seconds": {pubsub.SUBSCRIPTION_RETENTION_SECONDS},
    }


def test_a_changed_bound_in_terraform_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = tfcheck.parse_hcl

    def loosened(text: str) -> tfcheck.Body:
        return real(text.replace("p.ack_deadline_seconds <= 600", "p.ack_deadline_seconds <= 900"))

    monkeypatch.setattr(tfcheck, "parse_hcl", loosened)
    with pytest.raises(AssertionError):
        test_the_topology_modules_validations_are_the_core_limits()


@pytest.mark.parametrize(
    ("field", "bounds"),
    [
        ("ack_deadline_seconds", pubsub.ACK_DEADLINE_SECONDS),
        ("message_retention_seconds", pubsub.SUBSCRIPTION_RETENTION_SECONDS),
    ],
)
def test_a_plugin_route_and_the_topology_file_refuse_the_same_values(
    field: str, bounds: pubsub.Bounds
) -> None:
    route = {
        "retry_policy": {"minimum_backoff_seconds": 10, "maximum_backoff_seconds": 600},
        "dead_letter": {"topic": "dlq", "max_delivery_attempts": 5},
    }
    for value in (bounds.low, bounds.high):
        assert getattr(Delivery.model_validate({field: value}), field) == value
        assert getattr(Subscription.model_validate({**route, field: value}), field) == value
    for value in (bounds.low - 1, bounds.high + 1):
        with pytest.raises(ValidationError, match=field):
            Delivery.model_validate({field: value})
        with pytest.raises(ValidationError, match=field):
            Subscription.model_validate({**route, field: value})


def test_the_topology_file_holds_retry_dead_letter_and_topic_retention_to_the_limits() -> None:
    low, high = pubsub.BACKOFF_SECONDS
    ok = {"minimum_backoff_seconds": low, "maximum_backoff_seconds": high}
    good = {"retry_policy": ok, "dead_letter": {"topic": "dlq", "max_delivery_attempts": 5}}
    assert Subscription.model_validate(good).retry_policy == pubsub.Backoff(**ok)
    with pytest.raises(ValidationError, match="maximum_backoff_seconds"):
        Subscription.model_validate({**good, "retry_policy": {**ok, "maximum_backoff_seconds": high + 1}})
    over = pubsub.MAX_DELIVERY_ATTEMPTS.high + 1
    with pytest.raises(ValidationError, match="max_delivery_attempts"):
        Subscription.model_validate({**good, "dead_letter": {"topic": "dlq", "max_delivery_attempts": over}})
    assert Topic(message_retention_seconds=pubsub.TOPIC_RETENTION_SECONDS.high).message_retention_seconds
    with pytest.raises(ValidationError, match="message_retention_seconds"):
        Topic(message_retention_seconds=pubsub.TOPIC_RETENTION_SECONDS.high + 1)


def test_bounds_hold_whole_numbers_only() -> None:
    assert 10 in pubsub.ACK_DEADLINE_SECONDS and 600 in pubsub.ACK_DEADLINE_SECONDS
    assert 9 not in pubsub.ACK_DEADLINE_SECONDS and 601 not in pubsub.ACK_DEADLINE_SECONDS
    assert None not in pubsub.ACK_DEADLINE_SECONDS and "60" not in pubsub.ACK_DEADLINE_SECONDS
    assert True not in pubsub.BACKOFF_SECONDS
