"""The Pub/Sub push envelope, parsed once at the edge into a typed job message."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.contract import JobMessage


class BadEnvelope(ValueError):
    """The request is not a Pub/Sub push of a job message (a poison message)."""


class PushMessage(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    data: str = ""
    attributes: dict[str, str] = Field(default_factory=dict)
    message_id: str = Field("", alias="messageId")
    publish_time: str | None = Field(None, alias="publishTime")


class PushEnvelope(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    message: PushMessage
    subscription: str = ""
    # Production sets this when the subscription has a dead-letter policy; the emulator never does.
    delivery_attempt: int | None = Field(None, alias="deliveryAttempt")


def decode(body: bytes) -> tuple[PushEnvelope, JobMessage]:
    """Parse a push request body.

    Raises:
        BadEnvelope: with the reason, for anything that is not a job message.
    """
    try:
        envelope = PushEnvelope.model_validate_json(body)
    except ValidationError as exc:
        raise BadEnvelope(f"not a Pub/Sub push envelope: {exc.error_count()} errors") from exc
    try:
        data = base64.b64decode(envelope.message.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadEnvelope("message data is not base64") from exc
    try:
        return envelope, JobMessage.model_validate_json(data)
    except ValidationError as exc:
        raise BadEnvelope(f"message is not a job message: {data[:120]!r}") from exc


def waited_since(publish_time: str | datetime | None, now: datetime | None = None) -> float:
    """Seconds since a message was published (how long its job has waited, for the lanes' aging);
    0 when the time is missing or not a timestamp."""
    if publish_time is None:
        return 0.0
    try:
        published = (
            publish_time if isinstance(publish_time, datetime) else datetime.fromisoformat(publish_time)
        )
    except ValueError:
        return 0.0
    if published.tzinfo is None:
        published = published.replace(tzinfo=UTC)
    return max(((now or datetime.now(UTC)) - published).total_seconds(), 0.0)
