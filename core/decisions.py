"""What the lease decisions of :mod:`core.lifecycle` take and give: claims, endings, decisions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from core.contract import ErrorInfo, JobDoc, JobStatus, Progress, Timings, Usage
from core.patch import Patch

T = TypeVar("T")


class LeaseLost(Exception):
    """This worker no longer owns the unit: another attempt took over, or it ended."""


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"
    NOT_FOUND = "not_found"
    FINAL = "final"  # already ended: a duplicate delivery
    NOT_QUEUED = "not_queued"  # pending: not validated yet, so not runnable
    RUNNING_ELSEWHERE = "running_elsewhere"  # another worker holds a live lease
    CANCELLED = "cancelled"  # cancel requested before it started: ended now
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"  # ended as failed now
    FANNED_OUT = "fanned_out"  # a multi-part job already prepared: its parts are running
    INVALID = "invalid"  # the document does not fit the contract: ended now, with why
    MISROUTED = "misrouted"  # the delivery names another pipeline than the job's: not run
    # -- decided by the worker before or after a claim, never written to the document
    NOT_SERVED = "not_served"  # the pipeline is not served by this service: left alone
    UNKNOWN_PART = "unknown_part"  # the delivery names a part its pipeline does not have: not run
    LEASE_LOST = "lease_lost"  # another attempt took the unit over: this one committed nothing


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: JobDoc | None = None
    attempt: int = 0
    #: the job's final state when this claim ended the whole job (a cancel, spent attempts, or the
    #: last part ending that way)
    ended: JobStatus | None = None


@dataclass(frozen=True)
class Decision(Generic[T]):
    result: T
    patch: Patch | None = None
    #: how the job ends, when this decision ends it (its usage goes to the owner's daily roll-up
    #: in the same commit)
    ending: Ending | None = None


@dataclass(frozen=True)
class Ending:
    """How one attempt of a unit ends: a final state, or ``queued`` to be tried again."""

    status: JobStatus
    error: ErrorInfo | None = None
    outputs: dict[str, Any] | None = None
    files: dict[str, str] | None = None  # parts: their published files
    progress: Progress | None = None
    timings: Timings | None = None
    runtime: dict[str, Any] | None = None
    #: what the job (or the part) cost: written with the ending; a job's is rolled up in the owner's ledger
    usage: Usage | None = None
    seconds: float | None = None  # parts: how long the attempt ran
    #: the attempt does not count (the worker is shutting down: not the job's fault)
    refund: bool = False
    #: a cancelled job keeps no outputs
    clear_outputs: bool = False


#: Ends a multi-part job from its parts, once every part is final (pure; may run more than once).
Joiner = Callable[[JobDoc], Ending]

#: The share of a multi-part job's progress bar that its prepare step takes.
PREPARE_WEIGHT = 0.3
