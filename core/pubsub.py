"""Pub/Sub's limits on a route's settings, written once.

Every check of a subscription's settings reads its bounds from here: a plugin's
:class:`~core.spec.Delivery` (refused when the plugin is imported), the topology file
(``infra/topology.py``, refused when the local stack or a service loads it), the registry's check
of each plugin's route, and the Terraform tests, which hold the ``validation`` blocks of
``terraform/modules/topology/variables.tf`` and ``terraform/modules/pubsub/variables.tf`` to these
numbers. Limits: https://cloud.google.com/pubsub/quotas#resource_limits
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Bounds(NamedTuple):
    """An inclusive range of whole numbers."""

    low: int
    high: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def field(self, default: Any = ...) -> Any:
        """A pydantic ``Field`` that accepts only values in this range."""
        return Field(default, ge=self.low, le=self.high)


#: how long Pub/Sub waits for an ack (for push, the request timeout) before redelivering
ACK_DEADLINE_SECONDS = Bounds(10, 600)
#: the retry policy's minimum and maximum wait before a redelivery
BACKOFF_SECONDS = Bounds(0, 600)
#: deliveries before a message goes to the dead-letter topic
MAX_DELIVERY_ATTEMPTS = Bounds(5, 100)
#: how long a subscription keeps unacked messages (10 minutes to 7 days)
SUBSCRIPTION_RETENTION_SECONDS = Bounds(600, 7 * 24 * 3600)
#: how long a topic keeps messages (10 minutes to 31 days)
TOPIC_RETENTION_SECONDS = Bounds(600, 31 * 24 * 3600)
#: push: Pub/Sub calls the GPU service; pull: a worker pool pulls (jobs longer than the deadline)
Mode = Literal["push", "pull"]
MODES: tuple[str, ...] = get_args(Mode)

AckDeadline = Annotated[int, ACK_DEADLINE_SECONDS.field()]
BackoffSeconds = Annotated[int, BACKOFF_SECONDS.field()]
DeliveryAttempts = Annotated[int, MAX_DELIVERY_ATTEMPTS.field()]
SubscriptionRetention = Annotated[int, SUBSCRIPTION_RETENTION_SECONDS.field()]
TopicRetention = Annotated[int, TOPIC_RETENTION_SECONDS.field()]


class Backoff(BaseModel):
    """A subscription's retry policy: redelivery waits between these bounds (seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    minimum_backoff_seconds: BackoffSeconds
    maximum_backoff_seconds: BackoffSeconds

    @model_validator(mode="after")
    def _ordered(self) -> Backoff:
        if self.minimum_backoff_seconds > self.maximum_backoff_seconds:
            raise ValueError("minimum_backoff_seconds must not exceed maximum_backoff_seconds")
        return self
