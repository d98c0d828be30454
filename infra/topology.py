"""Reads ``infra/topology.yaml``, the one declaration of the event topology (Terraform reads it too).

Pub/Sub's limits on a subscription's settings come from :mod:`core.pubsub`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.pubsub import (
    AckDeadline,
    Backoff,
    DeliveryAttempts,
    Mode,
    SubscriptionRetention,
    TopicRetention,
)
from core.routes import check_name, route

TOPOLOGY_FILE = Path(__file__).with_name("topology.yaml")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


EVENT_TYPES = ("OBJECT_FINALIZE", "OBJECT_DELETE", "OBJECT_ARCHIVE", "OBJECT_METADATA_UPDATE")


class Notification(_Model):
    topic: str
    event_types: list[
        Literal["OBJECT_FINALIZE", "OBJECT_DELETE", "OBJECT_ARCHIVE", "OBJECT_METADATA_UPDATE"]
    ] = Field(min_length=1)
    object_prefix: str = ""


class Bucket(_Model):
    notification: Notification | None = None


class FirestoreTrigger(_Model):
    event_type: str
    document: str


class Trigger(_Model):
    pubsub_topic: str | None = None
    firestore: FirestoreTrigger | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Trigger:
        if (self.pubsub_topic is None) == (self.firestore is None):
            raise ValueError("a trigger has exactly one of pubsub_topic or firestore")
        return self


class Function(_Model):
    target: str
    trigger: Trigger


class DeadLetter(_Model):
    topic: str
    max_delivery_attempts: DeliveryAttempts


class Subscription(_Model):
    mode: Mode = "push"
    ack_deadline_seconds: AckDeadline = 10
    retry_policy: Backoff
    dead_letter: DeadLetter
    message_retention_seconds: SubscriptionRetention = 86400
    parts: list[str] = Field(default_factory=list)

    @field_validator("parts")
    @classmethod
    def _part_names(cls, value: list[str]) -> list[str]:
        for part in value:
            check_name("part", part)
        if len(set(value)) != len(value):
            raise ValueError("part names must be unique")
        return value


class Topic(_Model):
    message_retention_seconds: TopicRetention | None = None


class Schedule(_Model):
    topic: str
    schedule: str


class Topology(_Model):
    buckets: dict[str, Bucket]
    schedules: dict[str, Schedule] = Field(default_factory=dict)
    firestore: dict[str, str]
    topics: dict[str, Topic]
    functions: dict[str, Function]
    pipeline_defaults: dict[str, Any]
    pipelines: dict[str, dict[str, Any]]

    @model_validator(mode="after")
    def _references(self) -> Topology:
        """Every name the file refers to is declared, as Terraform's module.topology checks."""
        for name in self.pipelines:
            check_name("pipeline", name)
        declared = set(self.topics) | {route(n, lane).topic for n, lane in self.routes()}
        wanted = {f"bucket {k}": b.notification.topic for k, b in self.buckets.items() if b.notification}
        wanted |= {
            f"function {k}": f.trigger.pubsub_topic
            for k, f in self.functions.items()
            if f.trigger.pubsub_topic
        }
        wanted |= {f"schedule {k}": s.topic for k, s in self.schedules.items()}
        wanted |= {
            f"pipeline {n} dead letter": self.subscription(n).dead_letter.topic for n in self.pipelines
        }
        missing = {who: topic for who, topic in wanted.items() if topic not in declared}
        if missing:
            raise ValueError(f"topics used but not declared under topics: {missing}")
        return self

    def subscription(self, pipeline: str) -> Subscription:
        """The GPU subscription settings of ``pipeline``: defaults merged with its overrides."""
        merged = {**self.pipeline_defaults, **(self.pipelines.get(pipeline) or {})}
        return Subscription.model_validate(merged)

    def with_plugins(self, entries: Mapping[str, Mapping[str, Any]]) -> Topology:
        """This topology plus plugin pipelines' entries (from their specs: ``gpujobs pipelines
        --topology``), checked like the file's own. A pipeline the file declares keeps the file's
        entry, as Terraform's ``plugin_pipelines`` does."""
        added = {name: dict(entry) for name, entry in entries.items() if name not in self.pipelines}
        return Topology.model_validate({**self.model_dump(), "pipelines": {**self.pipelines, **added}})

    def routes(self) -> list[tuple[str, str | None]]:
        """Every (pipeline, part) that has its own topic and subscription; part None = the job."""
        found: list[tuple[str, str | None]] = []
        for name in self.pipelines:
            found.append((name, None))
            found.extend((name, part) for part in self.subscription(name).parts)
        return found


def load_topology(path: Path = TOPOLOGY_FILE) -> Topology:
    return Topology.model_validate(yaml.safe_load(path.read_text()))
