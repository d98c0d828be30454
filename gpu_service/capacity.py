"""This instance's slots: how many units of work run at once, and who gets the next free one.

A push that finds every slot busy is not turned away at once (a 429 makes Pub/Sub back off that
subscription for up to minutes, idling the GPU when the burst drains). It waits, up to
``push_wait_seconds``, in a queue that hands the next free slot by the rule of ``core/lanes.py``:
interactive work before batch work (batch work that waited too long ages into the interactive
lane), then weighted fair share between users (stride scheduling on the units they start), so
one user's thousand jobs do not starve another's one. Optional per-pipeline caps keep one slow pipeline from
holding every slot.

It also keeps the figures a burst is judged by: the time the slots were busy, and the longest a
slot stayed free while work waited for it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.lanes import FairShare, Priority, W


@dataclass
class _Waiter:
    pipeline: str
    uid: str
    order: int
    priority: Priority = Priority.INTERACTIVE
    weight: float = 1.0
    since: float = field(default_factory=time.monotonic)
    granted: bool = False
    event: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Slot:
    pipeline: str
    uid: str


class Capacity:
    def __init__(
        self, total: int, per_pipeline: Mapping[str, int] | None = None, *, aging_seconds: float = 60.0
    ) -> None:
        if total < 1:
            raise ValueError("at least one slot")
        self.total = total
        self._share = FairShare(aging_seconds)
        self._caps = dict(per_pipeline or {})
        self._lock = threading.Lock()
        self._running: Counter[str] = Counter()  # by pipeline
        self._by_uid: Counter[str] = Counter()
        self._waiters: list[_Waiter] = []
        self._order = itertools.count()
        self._freed = threading.Condition(self._lock)
        # busy-time accounting
        self._started = time.monotonic()
        self._busy_slot_seconds = 0.0
        self._last_change = self._started

    # -- accounting ----------------------------------------------------------------------------------

    def _account(self) -> None:
        now = time.monotonic()
        self._busy_slot_seconds += sum(self._running.values()) * (now - self._last_change)
        self._last_change = now

    def stats(self) -> dict[str, float]:
        with self._lock:
            self._account()
            elapsed = max(self._last_change - self._started, 1e-9)
            return {
                "slots": self.total,
                "running": sum(self._running.values()),
                "waiting": len(self._waiters),
                "busy_fraction": round(self._busy_slot_seconds / (elapsed * self.total), 4),
            }

    # -- slots ---------------------------------------------------------------------------------------

    def _fits(self, pipeline: str) -> bool:
        if sum(self._running.values()) >= self.total:
            return False
        cap = self._caps.get(pipeline)
        return cap is None or self._running[pipeline] < cap

    def _take(self, pipeline: str, uid: str, weight: float) -> Slot:
        self._account()
        self._running[pipeline] += 1
        self._by_uid[uid] += 1
        self._share.started(uid, weight)
        return Slot(pipeline, uid)

    def free(self) -> int:
        with self._lock:
            return self.total - sum(self._running.values())

    def running_uids(self) -> list[str]:
        """Users with units running here, most first."""
        with self._lock:
            return [uid for uid, _ in self._by_uid.most_common()]

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)

    def order(self, waiting: list[W], now: float) -> list[W]:
        """``waiting`` (the redriver's candidates, ``since`` on ``now``'s clock) in the order this
        queue would serve them, given who runs what here now."""
        with self._lock:
            return self._share.order(waiting, self._by_uid, now)

    def try_acquire(
        self, pipeline: str, uid: str = "", *, priority: Priority = Priority.INTERACTIVE, weight: float = 1.0
    ) -> Slot | None:
        """A slot now, if one is free and nobody is waiting for it."""
        with self._lock:
            if self._waiters or not self._fits(pipeline):
                return None
            return self._take(pipeline, uid, weight)

    def acquire(
        self,
        pipeline: str,
        uid: str = "",
        timeout: float = 0.0,
        *,
        priority: Priority = Priority.INTERACTIVE,
        weight: float = 1.0,
        waited: float = 0.0,
    ) -> Slot | None:
        """A slot, waiting up to ``timeout`` seconds in the queue; ``None`` if none came.
        ``waited``: how long the unit has waited already (since it was queued), for aging."""
        with self._lock:
            if not self._waiters and self._fits(pipeline):
                return self._take(pipeline, uid, weight)
            if timeout <= 0:
                return None
            since = time.monotonic() - max(waited, 0.0)
            waiter = _Waiter(pipeline, uid, next(self._order), priority, weight, since)
            self._waiters.append(waiter)
        waiter.event.wait(timeout)
        with self._lock:
            if waiter.granted:  # also when the grant came just as the wait timed out
                return Slot(pipeline, uid)
            self._waiters.remove(waiter)
            return None

    def release(self, slot: Slot) -> None:
        with self._lock:
            self._account()
            self._running[slot.pipeline] -= 1
            self._by_uid[slot.uid] -= 1
            if self._by_uid[slot.uid] <= 0:
                del self._by_uid[slot.uid]
            self._grant()
            self._freed.notify_all()

    def _grant(self) -> None:
        """Hand free slots to waiters, in the order of ``core/lanes.py``."""
        while self._waiters:
            eligible = [w for w in self._waiters if self._fits(w.pipeline)]
            chosen = self._share.pick(eligible, self._by_uid, time.monotonic())
            if chosen is None:
                return
            self._waiters.remove(chosen)
            self._take(chosen.pipeline, chosen.uid, chosen.weight)
            chosen.granted = True
            chosen.event.set()

    def wait_for_free(self, timeout: float) -> None:
        """Block until a slot is released (or ``timeout``): the redriver's wake-up."""
        with self._lock:
            self._freed.wait(timeout)
