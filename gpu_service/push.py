"""The Pub/Sub push envelope, parsed once at the edge into a typed job message."""

from __future__ import annotations

import base64
import binascii

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
