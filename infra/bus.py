"""Pub/Sub edge: publishing job messages."""

from __future__ import annotations

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from google.pubsub_v1 import PubsubMessage
from google.pubsub_v1.services.publisher.client import PublisherClient as _GapicPublisher

from core.contract import JobMessage
from core.errors import RetryableError
from core.routes import route
from infra import roundtrips
from infra.settings import Settings


class Bus:
    def __init__(self, settings: Settings, publisher: pubsub_v1.PublisherClient | None = None) -> None:
        self._settings = settings
        self._publisher = publisher or pubsub_v1.PublisherClient()

    def topic_path(self, topic: str) -> str:
        return str(self._publisher.topic_path(self._settings.google_cloud_project, topic))

    def publish(self, topic: str, data: bytes, **attributes: str) -> str:
        """Publish and wait for the server's ack; returns the message id."""
        roundtrips.note("pubsub")
        try:
            # The library's own publish call, unbatched: its batching would hand each message to
            # a commit thread (a new thread per batch) and wait, for one message at a time. Same
            # request, same retry policy.
            response = _GapicPublisher.publish(
                self._publisher,
                topic=self.topic_path(topic),
                messages=[PubsubMessage(data=data, attributes=attributes)],
                timeout=30,
            )
            return str(response.message_ids[0])
        except (gexc.GoogleAPIError, TimeoutError) as exc:
            raise RetryableError(f"could not publish to {topic}: {exc}", code="queue_unavailable") from exc

    def publish_job(self, message: JobMessage, topic: str | None = None) -> str:
        attrs = {"jobId": message.job_id, "pipeline": message.pipeline}
        if message.part:
            attrs["part"] = message.part
        body = message.model_dump_json(by_alias=True, exclude_none=True).encode()
        return self.publish(topic or route(message.pipeline).topic, body, **attrs)
