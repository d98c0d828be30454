"""Work is never left waiting while a slot is idle: the job documents are the queue's truth.

A Pub/Sub delivery is a doorbell, not the work itself: a message may be in a backoff of minutes
(Pub/Sub's per-message backoff reaches 300 s), dead-lettered, or lost, while its job sits
``queued``. So whenever this instance has a free slot and no push is waiting for one, the
redriver looks for runnable work straight in Firestore — the oldest ``queued`` jobs of the
pipelines served here, and the queued parts of fanned-out jobs — that has waited at least
``redrive_after_seconds`` (younger work is the push path's), picks it in the order of
``core/lanes.py`` (interactive before batch, with aging; then weighted fair share between users,
oldest first), and runs it through the same claim as a delivery. The
claim is still the only way to run, so a job found here and pushed at the same moment runs once.

When every slot is busy, it queues the next unit of each user with work waiting (queued
interactive work, the oldest queued work, and that of users who have nothing running here,
found with Firestore's ``not-in`` on the users who do) for the next free slot. The capacity
hands a freed slot by the same rule, so one user's thousand queued jobs do not make another
user's one wait behind them, and interactive work does not wait behind batch work, whatever order
Pub/Sub delivers in.

What a pass reads is sized to what it can take: its free slots (or, all busy, the waiters it may
queue) plus ``LOOKAHEAD`` for the units it cannot (too young, cancelled, another pipeline's, or
claimed by another instance meanwhile). The queued jobs are read whole, so the claim of one that
nobody wrote since writes against the update time read here without reading it again. Instances
whose slots free together read the same head of the queue and race for it; the claim settles who
runs it. A pass that lost a claim to another instance waits a random fraction of
``RACE_BACKOFF_SECONDS`` before reading again, so that the losers do not read the same head once
more together; and for ``RACED_SECONDS`` after, a pass after a slot frees starts a random moment
(up to ``COALESCE_SECONDS``) later: the slots freeing with it are taken with one read, and the
instances' passes fall out of step. An instance that races nobody (the only one, or one whose
work reaches it by push) starts its passes at once: a short job's slot is not left idle.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from core.contract import JobDoc, JobMessage, JobStatus, QueuedCopy
from core.lanes import FairShare, Priority
from core.lifecycle import Claim, ClaimOutcome, Delivered, described
from gpu_service.capacity import Capacity, Slot
from gpu_service.worker import Worker
from infra.jobs import utcnow

log = logging.getLogger(__name__)

#: Units a pass reads beyond those it can take (a margin for the ones it cannot): small, since each
#: is a billed read on every pass of every instance.
LOOKAHEAD = 3
#: A pass that lost a claim to another instance waits up to this long (at random) before the next.
RACE_BACKOFF_SECONDS = 0.5
#: After a claim lost to another instance, for this long, a pass after a slot freed waits up to
#: ``COALESCE_SECONDS`` (at random) for the slots freeing with it: about two claims' round trips.
RACED_SECONDS = 60.0
COALESCE_SECONDS = 0.1


@dataclass(frozen=True)
class Candidate:
    message: JobMessage
    uid: str
    waiting_since: datetime
    priority: Priority = Priority.INTERACTIVE
    weight: float = 1.0
    order: int = 0

    @property
    def since(self) -> float:
        return self.waiting_since.timestamp()

    def known(self, seen: dict[str, QueuedCopy]) -> Candidate:
        """This unit, its message carrying the job as the read saw it whole (a job, not a part:
        other parts write the same document), for its claim to write against unread."""
        copy = seen.get(self.message.job_id) if self.message.part is None else None
        return replace(self, message=self.message.model_copy(update={"queued": copy})) if copy else self


def fair_order(candidates: Iterable[Candidate], capacity: Capacity | None = None) -> list[Candidate]:
    """The candidates in the order of ``core/lanes.py`` (lane, aging, weighted fair share), given
    who runs what on ``capacity``. Among one user's equals: round robin over pipelines, each
    pipeline's oldest first, so a slow pipeline's work is not always last."""
    by_pipeline: dict[str, list[Candidate]] = defaultdict(list)
    for c in sorted(candidates, key=lambda c: c.waiting_since):
        by_pipeline[c.message.pipeline].append(c)
    numbered: list[Candidate] = []
    queues = list(by_pipeline.values())
    while any(queues):
        for q in queues:
            if q:
                numbered.append(replace(q.pop(0), order=len(numbered)))
    now = utcnow().timestamp()
    if capacity is None:
        return FairShare().order(numbered, {}, now)
    return capacity.order(numbered, now)


def candidates(
    jobs: Iterable[tuple[str, JobDoc]], served: set[str], now: datetime, after: float
) -> list[Candidate]:
    """Runnable units among ``jobs``: queued jobs, and the queued parts of running ones."""
    found: list[Candidate] = []
    cutoff = now - timedelta(seconds=after)
    for job_id, job in jobs:
        if job.malformed or job.pipeline not in served or job.cancel_requested:
            continue
        since = job.updated_at or job.queued_at
        if since is None or since > cutoff:
            continue
        if job.status is JobStatus.QUEUED and not job.parts:
            found.append(Candidate(JobMessage.of(job_id, job), job.uid, job.queued_at or since, *_hints(job)))
        elif job.status is JobStatus.RUNNING and job.parts:
            for key, part in job.parts.items():
                if part.status is JobStatus.QUEUED:
                    message = JobMessage.of(job_id, job, key)
                    found.append(Candidate(message, job.uid, since, *_hints(job)))
    return found


def quiet_until(
    jobs: Iterable[JobDoc], limit: int, now: datetime, after: float, served: Collection[str] | None = None
) -> datetime:
    """After a pass at ``now`` that found nothing old enough among ``jobs`` (what
    :meth:`Redriver.runnable` read with ``limit``), the earliest time a pass could: a unit is
    old enough ``after`` seconds past its job's last write (its queueing, at the earliest).

    Work written after the read is not old enough before ``now + after``; a full oldest-queued
    read saw the ``limit`` oldest queued jobs, so those it did not see were queued after the
    last of them; a full read of running jobs (not ordered) bounds nothing: ``now``. Jobs of
    pipelines other than ``served`` never become this instance's work: they bound nothing.
    """
    jobs = list(jobs)
    until = now + timedelta(seconds=after)
    mine = [j for j in jobs if served is None or j.pipeline in served or j.status is not JobStatus.QUEUED]
    # A full read of this instance's queued work (the oldest-queued read, or the second look at
    # its own pipelines when other services' backlog filled that one) bounds the unseen.
    queued = sorted(j.queued_at for j in mine if j.status is JobStatus.QUEUED and j.queued_at is not None)
    if len(queued) >= limit:
        until = min(until, queued[limit - 1] + timedelta(seconds=after))
    if sum(1 for j in jobs if j.status is JobStatus.RUNNING) >= limit:
        return now
    for job in mine:
        since = job.updated_at or job.queued_at
        if since is not None:
            until = min(until, since + timedelta(seconds=after))
    return until


def _lost_to_another(outcome: Delivered, message: JobMessage, worker: Worker) -> bool:
    """Whether a redriven claim found its unit running under another instance's lease (not under
    this one's: a push here that took it first is no race with another instance)."""
    if not isinstance(outcome, Claim) or outcome.outcome is not ClaimOutcome.RUNNING_ELSEWHERE:
        return False
    job = outcome.job
    unit = job.parts.get(message.part) if job is not None and job.parts and message.part else job
    return unit is None or unit.lease is None or unit.lease.owner != worker.owner


def _hints(job: JobDoc) -> tuple[Priority, float]:
    return job.priority or Priority.INTERACTIVE, job.share_weight or 1.0


class Redriver:
    def __init__(
        self,
        worker: Worker,
        capacity: Capacity,
        served: Iterable[str],
        *,
        after_seconds: float,
        poll_seconds: float,
        reserve_seconds: float = 30.0,
    ) -> None:
        self.worker = worker
        self.capacity = capacity
        self.served = set(served)
        # Only these pipelines' running jobs can have queued parts: the only running jobs to read.
        self.parted = {n for n in self.served if (spec := worker.catalog.get(n)) is not None and spec.parts}
        self.after_seconds = after_seconds
        self.poll_seconds = poll_seconds
        self.reserve_seconds = reserve_seconds
        # job id -> (uid, lane): waiting for a slot, queued by the fairness pass
        self._reserved: dict[str, tuple[str, Priority]] = {}
        self._in_hand: set[str] = set()  # job ids it queued, waiting or running
        self._last_fairness_pass = 0.0
        # No queued unit can be old enough to redrive before then (see quiet_until): a slot that
        # frees sooner (every job's end, in a burst) needs no read of Firestore.
        self._quiet_until: datetime | None = None
        # After a claim lost to another instance: no pass before then (monotonic clock), and the
        # last such loss (passes are spread out for a while after it).
        self._backoff_until = 0.0
        self._raced_at = -RACED_SECONDS
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="redrive", daemon=True)
        # the units it started, and up to two waiters per slot (see _reserve_for_other_users)
        self._pool = ThreadPoolExecutor(3 * capacity.total, thread_name_prefix="redriven")
        self.started_units = 0

    def start(self) -> None:
        if self.served:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.capacity.wait_for_free(0)  # nothing to wait for: just let the loop see the flag
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            # Every poll, or sooner when a slot frees (a pass then may find the quiet spell on),
            # or when a back-off after a lost claim ends.
            backoff = self._backoff_until - time.monotonic()
            timeout = min(self.poll_seconds, backoff) if backoff > 0 else self.poll_seconds
            waited = time.monotonic()
            self.capacity.wait_for_free(timeout)
            if (
                time.monotonic() - waited < timeout
                and time.monotonic() - self._raced_at < RACED_SECONDS
                and self.capacity.free() > 0
                and not self.capacity.waiting()
            ):
                # Racing other instances, a slot freed for a pass to fill (not one the capacity
                # handed to a waiter: the waiters are replenished at once): the units that ended with
                # it free theirs within moments, and other instances' slots may have freed in step.
                # One pass a random moment later takes them all with one read, out of their step.
                self._stop.wait(random.uniform(0, COALESCE_SECONDS))
            if self._stop.is_set() or self.worker.draining.is_set():
                continue
            try:
                self.once()
            except Exception:  # Firestore unavailable, say: try again at the next tick
                log.warning("redrive pass failed", exc_info=True)

    def once(self) -> int:
        """One pass: start as many waiting units as there are free slots, or (all busy) queue the
        work of users with nothing running for the next free slot. Returns how many."""
        free = self.capacity.free()
        if free <= 0 or self.capacity.waiting():
            return self._reserve_for_other_users()
        if time.monotonic() < self._backoff_until:
            return 0  # it just lost a claim race: let the winners' claims land first
        now = utcnow()
        if self._quiet_until is not None and now < self._quiet_until:
            return 0  # the last read showed nothing can be old enough yet
        limit = free + LOOKAHEAD
        seen: dict[str, QueuedCopy] = {}
        found = self.runnable(limit, seen=seen)
        ready = candidates(found.items(), self.served, now, self.after_seconds)
        self._quiet_until = (
            None if ready else quiet_until(found.values(), limit, now, self.after_seconds, self.served)
        )
        started = 0
        for candidate in fair_order(ready, self.capacity):
            slot = self.capacity.try_acquire(
                candidate.message.pipeline,
                candidate.uid,
                priority=candidate.priority,
                weight=candidate.weight,
            )
            if slot is None:
                if self.capacity.free() <= 0:
                    break
                continue
            started += 1
            self._pool.submit(self._run, candidate.known(seen), slot)
        self.started_units += started
        return started

    def runnable(
        self, limit: int, others_than: list[str] | None = None, seen: dict[str, QueuedCopy] | None = None
    ) -> dict[str, JobDoc]:
        """The oldest runnable work (``find_runnable``) and, when that read was full, the queued
        work of other users than ``others_than`` (default: the users it found), which a heavy
        user's backlog could hide. A read that was not full saw every queued job: every user's
        work is in it, and the second query would only bill reads (each instance, each pass).
        ``seen`` gets the queued jobs read whole (``find_runnable``)."""
        found = dict(self.worker.jobs.find_runnable(limit, self.parted, seen))
        queued = [job for job in found.values() if job.status is JobStatus.QUEUED]
        if len(queued) < limit:
            return found
        if any(job.pipeline not in self.served for job in queued):
            # Full, and with other services' work in it: their backlog must not hide this one's.
            found.update(self.worker.jobs.find_queued_of_pipelines(self.served, limit, seen))
            queued = [job for job in found.values() if job.status is JobStatus.QUEUED]
        exclude = others_than if others_than is not None else sorted({job.uid for job in queued})
        if exclude:
            found.update(self.worker.jobs.find_queued_of_others(exclude, limit=limit, seen=seen))
        return found

    def _reserve_for_other_users(self) -> int:
        """All slots busy: queue, as waiters for the next free slot, the next unit of each user
        and lane with work waiting, so that the capacity picks among them by the rule when a slot
        frees, with who runs what then."""
        now = time.monotonic()
        with self._lock:
            room = 2 * self.capacity.total - len(self._reserved)
            # Slots free up often under load: look at most once per poll period.
            if room <= 0 or now - self._last_fairness_pass < self.poll_seconds:
                return 0
            self._last_fairness_pass = now
        busy_uids = self.capacity.running_uids()
        if not busy_uids:
            return 0
        limit = room + LOOKAHEAD
        # The oldest queued work (and interactive work, whatever its age: find_runnable), and that
        # of users with nothing running here, which a busy user's backlog could hide.
        seen: dict[str, QueuedCopy] = {}
        found = self.runnable(limit, others_than=busy_uids, seen=seen)
        chosen: list[Candidate] = []
        with self._lock:
            waiting = set(self._reserved.values())
            found_now = candidates(found.items(), self.served, utcnow(), self.after_seconds)
            for c in fair_order(found_now, self.capacity):
                if len(chosen) >= room:
                    break
                if c.message.job_id in self._in_hand or (c.uid, c.priority) in waiting:
                    continue  # one waiter per user and lane: the capacity orders users and lanes
                waiting.add((c.uid, c.priority))
                self._reserved[c.message.job_id] = (c.uid, c.priority)
                self._in_hand.add(c.message.job_id)
                chosen.append(c.known(seen))
        for c in chosen:
            self._pool.submit(self._wait_and_run, c)
        return len(chosen)

    def _wait_and_run(self, candidate: Candidate) -> None:
        job_id = candidate.message.job_id
        try:
            slot = self.capacity.acquire(
                candidate.message.pipeline,
                candidate.uid,
                self.reserve_seconds,
                priority=candidate.priority,
                weight=candidate.weight,
                waited=(utcnow() - candidate.waiting_since).total_seconds(),
            )
            with self._lock:
                self._reserved.pop(job_id, None)  # not waiting any more (still in hand while it runs)
            if slot is not None:
                self.started_units += 1
                self._run(candidate, slot)
        finally:
            with self._lock:
                self._reserved.pop(job_id, None)
                self._in_hand.discard(job_id)

    def _run(self, candidate: Candidate, slot: Slot) -> None:
        try:
            outcome = self.worker.process(candidate.message)
            log.info("redriven %s: %s", candidate.message.ref.label, described(outcome))
            if _lost_to_another(outcome, candidate.message, self.worker):
                self._raced_at = time.monotonic()
                self._backoff_until = self._raced_at + random.uniform(0, RACE_BACKOFF_SECONDS)
        except Exception:
            log.exception("redriven %s crashed", candidate.message.ref.label)
        finally:
            self.capacity.release(slot)
