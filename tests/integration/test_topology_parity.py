"""The topology is shared by construction: what the local stack creates on the Pub/Sub emulator is
what Terraform's ``module.topology`` would create, topic for topic and setting for setting.

The stack writes the topology it runs (the real one plus the test stand-ins) to its state
directory; Terraform's provider-free topology module is applied to that same file, and its
``pubsub_inventory`` output is compared with the emulator's own listing.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from core.routes import DEAD_LETTER_TOPIC, TOPIC_PREFIX, route
from infra.localstack.stack import LocalStack
from tests.unit.test_terraform import HARNESS, TERRAFORM, TOPOLOGY_MODULE, _terraform

pytestmark = [
    pytest.mark.skipif(TERRAFORM is None, reason="terraform is not on PATH"),
    pytest.mark.pipelines("automaton"),
]


def _seconds(duration: str | None) -> int | None:
    return None if duration is None else int(float(duration.rstrip("s")))


def _emulator(stack: LocalStack, kind: str) -> dict[str, dict[str, Any]]:
    url = f"http://127.0.0.1:{stack.ports['pubsub']}/v1/projects/{stack.config.project}/{kind}"
    items: dict[str, dict[str, Any]] = {}
    token = ""
    while True:
        resp = httpx.get(
            url, params={"pageSize": 1000, **({"pageToken": token} if token else {})}, timeout=10
        )
        resp.raise_for_status()
        body = resp.json()
        for item in body.get(kind, []):
            items[item["name"].rsplit("/", 1)[1]] = item
        token = body.get("nextPageToken", "")
        if not token:
            return items


@pytest.fixture(scope="module")
def inventory(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("tf-parity")
    (workdir / "main.tf").write_text(HARNESS % TOPOLOGY_MODULE.as_posix())
    assert _terraform(workdir, "init", "-backend=false").returncode == 0
    path = stack.config.state_dir / "topology.yaml"
    applied = _terraform(workdir, "apply", "-auto-approve", f"-var=path={path}")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    out = _terraform(workdir, "output", "-json", "t")
    value: dict[str, Any] = json.loads(out.stdout)["pubsub_inventory"]
    return value


def test_the_stack_creates_every_topic_terraform_would(stack: LocalStack, inventory: dict[str, Any]) -> None:
    topics = _emulator(stack, "topics")
    assert set(inventory["topics"]) <= set(topics)
    assert DEAD_LETTER_TOPIC in topics


def test_the_stack_creates_every_gpu_subscription_with_terraforms_settings(
    stack: LocalStack, inventory: dict[str, Any]
) -> None:
    subs = _emulator(stack, "subscriptions")
    suffix = route("x").subscription.removeprefix(route("x").topic)
    # The GPU route subscriptions (other tests add subscriptions of their own to this emulator).
    gpu_subs = {name for name in subs if name.startswith(TOPIC_PREFIX) and name.endswith(suffix)}
    assert gpu_subs == set(inventory["subscriptions"])
    for name, want in inventory["subscriptions"].items():
        got = subs[name]
        push = got.get("pushConfig", {}).get("pushEndpoint")
        seen = {
            "name": name,
            "topic": got["topic"].rsplit("/", 1)[1],
            "push_path": "/" + push.split("/", 3)[3] if push else None,
            "ack_deadline_seconds": got["ackDeadlineSeconds"],
            "retry_policy": {
                "minimum_backoff_seconds": _seconds(got["retryPolicy"]["minimumBackoff"]),
                "maximum_backoff_seconds": _seconds(got["retryPolicy"]["maximumBackoff"]),
            },
            "dead_letter": {
                "topic": got["deadLetterPolicy"]["deadLetterTopic"].rsplit("/", 1)[1],
                "max_delivery_attempts": got["deadLetterPolicy"]["maxDeliveryAttempts"],
            },
            "message_retention_seconds": _seconds(got.get("messageRetentionDuration")),
        }
        assert seen == {key: want[key] for key in seen}, name


def test_a_plugin_route_declared_by_its_spec_is_the_same_on_both_sides(
    stack: LocalStack, inventory: dict[str, Any]
) -> None:
    # automaton is enabled by name only: its entry comes from the installed spec, not topology.yaml.
    name = route("automaton").subscription
    emulated = _emulator(stack, "subscriptions")[name]
    assert inventory["subscriptions"][name]["ack_deadline_seconds"] == emulated["ackDeadlineSeconds"] == 300
    assert inventory["subscriptions"][name]["retry_policy"]["maximum_backoff_seconds"] == 60
