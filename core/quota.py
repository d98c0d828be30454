"""Per-user quotas: how many jobs a user may have unfinished, and start in a day.

Every way of creating a job (the HTTP API, a client's job document, a drop upload) passes the
job-created handler, which admits the job against the user's ledger (``quotas/{uid}``) in the
same Firestore transaction that queues it. The ledger holds the UTC day, the day's counts and the
ids of the user's admitted jobs not known to be final; a job that ends is pruned from it the next
time the user is near a cap (its document is read in the transaction), so no end path has to
decrement anything and the counts stay exact under concurrent creation.

Caps depend on how the user signed in: ``tiers`` maps a Firebase sign-in provider (the ID
token's ``firebase.sign_in_provider``: ``anonymous``, ``password``, ``google.com``, ``phone``...)
to its own caps, so that a script that signs in anonymously again and again gets a small quota
per account (or none) instead of the full one. Users whose provider has no tier get the top-level
caps. Which provider a user has is looked up by the functions (``infra/identity.py``).

This module is the pure part: the policy, the ledger, and the decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from core.contract import ErrorInfo
from core.lanes import LANES, Priority
from core.usage import DayUsage
from core.usage import day_of as day_of  # the roll-up's day, where usage is reported

#: The key of the all-pipelines count in :attr:`Ledger.daily`.
ALL = "*"
#: The sign-in provider of an anonymous account (Firebase's own name for it).
ANONYMOUS = "anonymous"


class QuotaLimits(BaseModel):
    """Caps for one scope (a user overall, or a user on one pipeline); ``None`` = no cap."""

    model_config = ConfigDict(extra="forbid")

    max_unfinished: int | None = Field(None, ge=0, le=1000, description="jobs admitted and not yet final")
    max_daily: int | None = Field(None, ge=0, description="jobs admitted per UTC day")
    gpu_seconds_daily: float | None = Field(None, ge=0, description="model seconds per UTC day, per user")
    gpu_seconds_estimate: float | None = Field(
        None, ge=0, description="a job's model seconds before the user has history on this pipeline today"
    )


class QuotaTier(BaseModel):
    """The caps of the users of one sign-in provider, in place of the top-level ones."""

    model_config = ConfigDict(extra="forbid")

    allowed: bool = Field(True, description="false: users of this provider may not start jobs at all")
    max_unfinished: int = Field(2, ge=1, le=1000, description="jobs admitted and not yet final, per user")
    max_daily: int | None = Field(20, ge=1, description="jobs admitted per UTC day, per user")
    pipelines: dict[str, QuotaLimits] = Field(default_factory=dict, description="tighter caps per pipeline")
    gpu_seconds_daily: float | None = Field(
        None, ge=0, description="model seconds per UTC day, per user (None: the top-level budget)"
    )
    priorities: list[Priority] | None = Field(
        None, min_length=1, description="the lanes these users may use (None: the top-level ones)"
    )
    weight: float | None = Field(
        None, gt=0, le=1000, description="these users' weight in fair share (None: the top-level one)"
    )


def _default_tiers() -> dict[str, QuotaTier]:
    # An anonymous account costs a script one call to make: it gets a tenth of the daily quota.
    return {ANONYMOUS: QuotaTier(max_unfinished=2, max_daily=100)}


class QuotaPolicy(BaseModel):
    """The ``QUOTAS`` setting: per-user caps, with optional per-pipeline caps on top, and their
    own caps for the users of some sign-in providers (``tiers``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_unfinished: int = Field(20, ge=1, le=1000, description="jobs admitted and not yet final, per user")
    max_daily: int | None = Field(1000, ge=1, description="jobs admitted per UTC day, per user")
    pipelines: dict[str, QuotaLimits] = Field(default_factory=dict, description="tighter caps per pipeline")
    retry_after_seconds: int = Field(
        30, ge=1, le=3600, description="what to tell a user at the unfinished cap to wait before trying again"
    )
    tiers: dict[str, QuotaTier] = Field(
        default_factory=_default_tiers,
        description="caps per sign-in provider (anonymous, password, google.com, ...), replacing the above",
    )
    gpu_seconds_daily: float | None = Field(
        None, ge=0, description="budget: model seconds (GPU time) per user per UTC day; None = no budget"
    )
    priorities: list[Priority] = Field(
        default_factory=lambda: list(LANES),
        min_length=1,
        description="the lanes a user may use; a job that names none waits in the first",
    )
    weight: float = Field(1.0, gt=0, le=1000, description="a user's weight in fair share between users")
    _closed_to: str | None = PrivateAttr(None)

    @property
    def closed_to(self) -> str | None:
        """The provider whose tier is not allowed, on a policy :meth:`for_provider` returned."""
        return self._closed_to

    def for_provider(self, provider: str | None) -> QuotaPolicy:
        """The caps that apply to a user who signed in with ``provider`` (``None``: not known)."""
        tier = self.tiers.get(provider) if provider is not None else None
        if tier is None:
            return self
        applied = self.model_copy(
            update={
                "max_unfinished": tier.max_unfinished,
                "max_daily": tier.max_daily,
                "pipelines": tier.pipelines,
                "gpu_seconds_daily": (
                    tier.gpu_seconds_daily if tier.gpu_seconds_daily is not None else self.gpu_seconds_daily
                ),
                "priorities": tier.priorities if tier.priorities is not None else self.priorities,
                "weight": tier.weight if tier.weight is not None else self.weight,
            }
        )
        applied._closed_to = None if tier.allowed else provider
        return applied


class Ledger(BaseModel):
    """``quotas/{uid}``: written by the backend only (the security rules close it to clients)."""

    model_config = ConfigDict(extra="ignore")

    day: str = ""
    daily: dict[str, int] = Field(default_factory=dict)
    #: admitted jobs not known to be final: job id -> pipeline
    active: dict[str, str] = Field(default_factory=dict)
    #: UTC day -> what the user's jobs that ended that day cost (added by the ends of jobs)
    usage: dict[str, DayUsage] = Field(default_factory=dict)


@dataclass(frozen=True)
class Admission:
    admitted: bool
    ledger: Ledger
    error: ErrorInfo | None = None


def seconds_to_midnight(now: datetime) -> int:
    now = now.astimezone(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return max(1, int((midnight - now).total_seconds()) + 1)


def needs_pruning(ledger: Ledger, policy: QuotaPolicy, pipeline: str) -> bool:
    """Whether the listed jobs must be read (to drop the final ones) before deciding: only when
    the user is at an unfinished cap, so the common case reads nothing but the ledger."""
    if len(ledger.active) >= policy.max_unfinished:
        return True
    cap = policy.pipelines.get(pipeline, QuotaLimits()).max_unfinished
    return cap is not None and sum(1 for p in ledger.active.values() if p == pipeline) >= cap


def decide_admission(
    ledger: Ledger,
    policy: QuotaPolicy,
    *,
    job_id: str,
    pipeline: str,
    now: datetime,
    finished: set[str] | frozenset[str] = frozenset(),
) -> Admission:
    """Admit ``job_id`` or refuse it with ``quota_exceeded``; returns the ledger to store.

    ``finished`` are listed job ids whose documents are final (or gone): they are pruned first.
    A job already listed is admitted again without counting twice (a redelivered event).
    """
    today = day_of(now)
    daily = dict(ledger.daily) if ledger.day == today else {}
    active = {j: p for j, p in ledger.active.items() if j not in finished}
    pruned = Ledger(day=today, daily=daily, active=active, usage=ledger.usage)
    if job_id in active:
        return Admission(True, pruned)

    def refuse(what: str, limit: int, retry_after: int, when: str) -> Admission:
        message = f"quota exceeded: {what} (the limit is {limit}); {when}"
        error = ErrorInfo(code="quota_exceeded", message=message, retry_after_seconds=retry_after)
        return Admission(False, pruned, error)

    if policy.closed_to is not None:
        how = "an anonymous account" if policy.closed_to == ANONYMOUS else f"a {policy.closed_to} account"
        message = (
            f"jobs cannot be started from {how} in this deployment: sign in with another method "
            "(or link one to this account) and try again"
        )
        return Admission(False, pruned, ErrorInfo(code="sign_in_required", message=message))
    wait = policy.retry_after_seconds
    midnight = seconds_to_midnight(now)
    until_midnight = f"try again after midnight UTC, in {midnight} s"
    if len(active) >= policy.max_unfinished:
        return refuse(
            f"{len(active)} of your jobs are not finished yet",
            policy.max_unfinished,
            wait,
            f"try again when one of them ends (in about {wait} s)",
        )
    started = daily.get(ALL, 0)
    if policy.max_daily is not None and started >= policy.max_daily:
        return refuse(f"you started {started} jobs today", policy.max_daily, midnight, until_midnight)
    limits = policy.pipelines.get(pipeline, QuotaLimits())
    running_here = sum(1 for p in active.values() if p == pipeline)
    if limits.max_unfinished is not None and running_here >= limits.max_unfinished:
        return refuse(
            f"{running_here} of your {pipeline} jobs are not finished yet",
            limits.max_unfinished,
            wait,
            f"try again when one of them ends (in about {wait} s)",
        )
    started_here = daily.get(pipeline, 0)
    if limits.max_daily is not None and started_here >= limits.max_daily:
        return refuse(
            f"you started {started_here} {pipeline} jobs today", limits.max_daily, midnight, until_midnight
        )
    over = over_budget(ledger, policy, pipeline=pipeline, active=active, today=today)
    if over is not None:
        used, estimate, budget = over
        in_flight = len(active)
        retry = wait if in_flight else midnight
        message = (
            f"budget exceeded: your jobs used {used:.1f} of your {budget:g} GPU seconds today, and this "
            f"job is estimated at {estimate:.1f} s"
            + (f" on top of {in_flight} unfinished jobs" if in_flight else "")
            + (
                f"; try again when one of them ends (in about {wait} s)"
                if in_flight
                else f"; try again after midnight UTC, in {midnight} s"
            )
        )
        error = ErrorInfo(code="budget_exceeded", message=message, retry_after_seconds=retry)
        return Admission(False, pruned, error)
    daily[ALL] = started + 1
    daily[pipeline] = started_here + 1
    active[job_id] = pipeline
    return Admission(True, Ledger(day=today, daily=daily, active=active, usage=ledger.usage))


def estimate_gpu_seconds(policy: QuotaPolicy, pipeline: str, day: DayUsage | None) -> float:
    """A job's model seconds before it runs: the user's mean on this pipeline today when they have
    one, else the pipeline's declared estimate (``gpu_seconds_estimate``), else 0."""
    history = day.mean_gpu_seconds(pipeline) if day is not None else None
    if history is not None:
        return history
    limits = policy.pipelines.get(pipeline)
    if limits is not None and limits.gpu_seconds_estimate is not None:
        return limits.gpu_seconds_estimate
    return 0.0


def over_budget(
    ledger: Ledger, policy: QuotaPolicy, *, pipeline: str, active: dict[str, str], today: str
) -> tuple[float, float, float] | None:
    """``(used, estimate, budget)`` when the job would push the user over a GPU-time budget (the
    user's, or the pipeline's), counting every unfinished job at its estimate; else ``None``."""
    day = ledger.usage.get(today)
    limits = policy.pipelines.get(pipeline, QuotaLimits())
    checks: list[tuple[float | None, float, int]] = [
        (
            policy.gpu_seconds_daily,
            day.gpu_seconds if day else 0.0,
            len(active),
        ),
        (
            limits.gpu_seconds_daily,
            day.pipelines[pipeline].gpu_seconds if day and pipeline in day.pipelines else 0.0,
            sum(1 for p in active.values() if p == pipeline),
        ),
    ]
    for budget, used, in_flight in checks:
        if budget is None:
            continue
        estimate = estimate_gpu_seconds(policy, pipeline, day)
        if used >= budget or used + estimate * (in_flight + 1) > budget:
            return used, estimate, budget
    return None
