"""Route names: the one place that turns a pipeline (and a part) into Pub/Sub and HTTP names.

Every consumer of these names — the functions (publish), the GPU service (push paths, pull
subscriptions, publishing parts), the sweeper (re-publish), the local stack (create), the fault
injector and the Terraform tests (compare) — calls :func:`route`; none builds a name itself.

==================  ==========================  ==================================
what                a job of ``video``          part ``speech`` of a ``video`` job
==================  ==========================  ==================================
topic               ``jobs-video``              ``jobs-video-speech``
subscription        ``jobs-video-gpu``          ``jobs-video-speech-gpu``
push path           ``/push/video``             ``/push/video/speech``
==================  ==========================  ==================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOPIC_PREFIX = "jobs-"
SUBSCRIPTION_SUFFIX = "-gpu"
PUSH_PREFIX = "/push/"
DEAD_LETTER_TOPIC = "jobs-dead-letter"

# Pipeline and part names become resource names (topics allow [A-Za-z0-9-_.~+%], 3-255 chars)
# and URL path segments, so both are kept to a safe, lower-case subset.
NAME_PATTERN = re.compile(r"\A[a-z][a-z0-9_]{0,39}\Z")


def check_name(kind: str, name: str) -> str:
    """``name`` if it may be a pipeline or part name, else ``ValueError`` saying why."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} must be 1-40 of a-z, 0-9, '_', starting with a letter")
    return name


@dataclass(frozen=True)
class Route:
    """Where the messages of one pipeline (``lane=None``: the job itself) or one of its parts go."""

    pipeline: str
    lane: str | None = None

    @property
    def key(self) -> str:
        """``video`` or ``video-speech``."""
        return f"{self.pipeline}-{self.lane}" if self.lane else self.pipeline

    @property
    def topic(self) -> str:
        return f"{TOPIC_PREFIX}{self.key}"

    @property
    def subscription(self) -> str:
        return f"{self.topic}{SUBSCRIPTION_SUFFIX}"

    @property
    def push_path(self) -> str:
        return f"{PUSH_PREFIX}{self.pipeline}" + (f"/{self.lane}" if self.lane else "")


def route(pipeline: str, lane: str | None = None) -> Route:
    return Route(pipeline, lane)
