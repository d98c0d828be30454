"""One kind of leased work: a job, or one part of a job, addressed by one value.

A job runs as one unit of work, or (a multi-part pipeline) as a prepare step on the job itself
followed by parts that are leased, retried and committed exactly like jobs. A part is named by
its key: a lane from the spec (``speech``), or shard *i* of a lane whose count the prepare step
decided (``chunk-3``). Everything that claims, renews, ends or recovers work takes a
:class:`WorkRef`, so jobs and parts share one code path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A lane is a spec-declared part name; a shard appends "-{index}".
PART_KEY_PATTERN = re.compile(r"\A(?P<lane>[a-z][a-z0-9_]{0,39})(?:-(?P<index>0|[1-9][0-9]{0,5}))?\Z")


def part_key(lane: str, index: int | None = None) -> str:
    key = lane if index is None else f"{lane}-{index}"
    if not PART_KEY_PATTERN.fullmatch(key):
        raise ValueError(f"invalid part key {key!r}")
    return key


def lane_of(key: str) -> str:
    """The lane (and so the route) of a part key: ``chunk`` for ``chunk-3``, ``speech`` for ``speech``."""
    m = PART_KEY_PATTERN.fullmatch(key)
    if not m:
        raise ValueError(f"invalid part key {key!r}")
    return m["lane"]


@dataclass(frozen=True)
class WorkRef:
    """A unit of leased work: job ``job_id`` itself (``part=None``) or one of its parts."""

    job_id: str
    part: str | None = None

    def __post_init__(self) -> None:
        if self.part is not None and not PART_KEY_PATTERN.fullmatch(self.part):
            raise ValueError(f"invalid part key {self.part!r}")

    @property
    def field_prefix(self) -> str:
        """Where this unit's lease lives on the job document (snake_case attribute path)."""
        return f"parts.{self.part}." if self.part else ""

    @property
    def lane(self) -> str | None:
        return lane_of(self.part) if self.part else None

    @property
    def label(self) -> str:
        return f"job {self.job_id}" + (f" part {self.part}" if self.part else "")
