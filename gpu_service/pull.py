"""Streaming-pull consumer: the second way to feed the worker, for jobs longer than a push allows.

A push subscription's ack deadline (600 s at most) is also the HTTP request timeout, and working
on after answering early is a trap on Cloud Run (an instance with no request in flight may be
throttled or shut down). For longer jobs, run the service as a Cloud Run worker pool (or any
always-on instance) with the pipeline's subscription in ``mode: pull``: the client library keeps
extending each message's ack deadline while the job runs (up to ``max_lease_seconds``), and the
same claim → run → commit code decides ack or nack.

Given the instance's ``Capacity``, the consumer holds more messages than it has slots, and each
waits for a slot in the same order as a push (``core/lanes.py``): an interactive job pulled
after a held batch job still starts first. A message that finds no slot within ``wait_seconds``
is nacked, which makes room in the flow control for newer messages (the redriver still sees its
job queued in Firestore).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from google.cloud import pubsub_v1  # type: ignore[attr-defined]
from google.cloud.pubsub_v1.subscriber.message import Message
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

from core.contract import JobMessage
from core.lanes import Priority
from core.lifecycle import redeliver
from gpu_service.capacity import Capacity
from gpu_service.push import BadEnvelope, waited_since
from gpu_service.worker import Worker
from infra.settings import Settings

log = logging.getLogger(__name__)


def flow_control_messages(settings: Settings, pipeline: str) -> int:
    """How many messages a pipeline's pull consumer holds at once: one per job slot, and never
    fewer than the pipeline's ``max_batch``. Jobs only batch when they are in the process together,
    so a consumer that lets fewer in would cap every batch at that number."""
    batching = settings.batching.get(pipeline)
    return max(settings.max_concurrent_jobs, batching.max_batch if batching else 1)


class PullConsumer:
    def __init__(
        self,
        worker: Worker,
        subscription: str,
        *,
        max_messages: int = 1,
        max_lease_seconds: int = 4 * 3600,
        subscriber: pubsub_v1.SubscriberClient | None = None,
        capacity: Capacity | None = None,
        wait_seconds: float = 30.0,
    ) -> None:
        self.worker = worker
        self.capacity = capacity
        self.wait_seconds = wait_seconds
        self.subscription = subscription
        self._subscriber = subscriber or pubsub_v1.SubscriberClient()
        self._flow = pubsub_v1.types.FlowControl(
            max_messages=max_messages, max_lease_duration=max_lease_seconds
        )
        self._executor = ThreadPoolExecutor(max_messages, thread_name_prefix="pull")
        self._future: pubsub_v1.subscriber.futures.StreamingPullFuture | None = None

    def start(self) -> None:
        self._future = self._subscriber.subscribe(
            self.subscription,
            callback=self._on_message,
            flow_control=self._flow,
            scheduler=ThreadScheduler(self._executor),
        )
        log.info("pulling from %s", self.subscription)

    def stop(self) -> None:
        """Stop pulling; messages not yet handled are nacked so they are redelivered at once."""
        if self._future is not None:
            self._future.cancel()
            try:
                self._future.result(timeout=30)
            except Exception:  # cancellation surfaces here; nothing to recover
                log.debug("streaming pull ended", exc_info=True)
            self._future = None

    def _on_message(self, message: Message) -> None:
        if self.worker.draining.is_set():
            message.nack()
            return
        try:
            job = JobMessage.model_validate_json(message.data)
        except ValueError as exc:
            log.error(
                "poison message %s on %s: %s", message.message_id, self.subscription, BadEnvelope(str(exc))
            )
            message.nack()  # the dead-letter policy takes it out of circulation
            return
        slot = None
        if self.capacity is not None:
            slot = self.capacity.acquire(
                job.pipeline,
                job.uid or "",
                self.wait_seconds,
                priority=job.priority or Priority.INTERACTIVE,
                weight=job.weight or 1.0,
                waited=waited_since(message.publish_time),
            )
            if slot is None:
                message.nack()  # still busy: let newer messages in; the redriver sees the job too
                return
        try:
            outcome = self.worker.process(job)
        finally:
            if slot is not None and self.capacity is not None:
                self.capacity.release(slot)
        if redeliver(outcome):
            message.nack()
        else:
            message.ack()
