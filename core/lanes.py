"""Who goes first: priority lanes with aging, then weighted fair share between users.

This is the one ordering rule of every place that picks the next unit of work: the capacity queue
(pushes waiting for a slot), the redriver (queued work found in Firestore) and pull mode. It is
pure: the callers hand it what waits, who runs how much, and the time.

The rule, in order:

1. **Lane.** ``interactive`` work goes before ``batch`` work. A batch unit that has waited
   ``aging_seconds`` is *aged*: it competes in the interactive lane from then on, so a steady
   stream of interactive work never starves the batch backlog.
2. **Weighted fair share.** Within the lane, the next unit goes to the user with the lowest
   *virtual time*. Each unit a user starts advances theirs by ``1 / weight``, so with weights 3
   and 1 and a backlog each, the first user starts three units for each of the second's, however
   many slots there are (stride scheduling). A user who comes back after being idle starts at the
   lowest virtual time of those served: idle time is not saved up as credit, and a newcomer's
   first unit goes next, ahead of a heavy user's backlog.
3. Ties (users at the same virtual time): the fewest units running per unit of weight.
4. Within a user: their interactive work before their aged batch work, then in ``order`` (the
   callers number units oldest first; the redriver alternates pipelines among a user's units).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Protocol, TypeVar


class Priority(StrEnum):
    """``job.priority``: the lane a job waits in."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


#: The lanes in the order they are served.
LANES: tuple[Priority, ...] = (Priority.INTERACTIVE, Priority.BATCH)


class Waiting(Protocol):
    """What the rule needs of a waiting unit (a capacity waiter, a redriver candidate)."""

    @property
    def uid(self) -> str: ...

    @property
    def priority(self) -> Priority: ...

    @property
    def weight(self) -> float: ...

    @property
    def since(self) -> float:
        """When it started waiting, in seconds on the clock ``now`` is given in."""
        ...

    @property
    def order(self) -> int:
        """The caller's order among equals (arrival: the oldest first)."""
        ...


W = TypeVar("W", bound=Waiting)

#: Users whose virtual time is kept at most (the oldest are forgotten: they start at the floor).
_MAX_USERS = 10_000


def _weight(value: float) -> float:
    return value if value > 0 else 1.0


class FairShare:
    """The ordering rule, and the per-user virtual times it keeps between picks."""

    def __init__(self, aging_seconds: float = 60.0) -> None:
        if aging_seconds < 0:
            raise ValueError("aging_seconds must be at least 0")
        self.aging_seconds = aging_seconds
        self._virtual: dict[str, float] = {}
        self._floor = 0.0

    def lane(self, unit: Waiting, now: float) -> int:
        """0: the interactive lane (interactive work, and batch work that has aged); 1: batch."""
        if unit.priority is Priority.INTERACTIVE:
            return 0
        return 0 if now - unit.since >= self.aging_seconds else 1

    def virtual_time(self, uid: str) -> float:
        return max(self._virtual.get(uid, self._floor), self._floor)

    def _key(
        self, unit: Waiting, now: float, running: Mapping[str, int], virtual: Mapping[str, float]
    ) -> tuple[int, float, float, int, int, float]:
        return (
            self.lane(unit, now),
            max(virtual.get(unit.uid, self._floor), self._floor),
            running.get(unit.uid, 0) / _weight(unit.weight),
            0 if unit.priority is Priority.INTERACTIVE else 1,
            unit.order,
            unit.since,
        )

    def pick(self, waiting: Iterable[W], running: Mapping[str, int], now: float) -> W | None:
        """The unit that goes next, or ``None`` when nothing waits. Does not change the state:
        call :meth:`started` once it has its slot."""
        return min(waiting, key=lambda u: self._key(u, now, running, self._virtual), default=None)

    def started(self, uid: str, weight: float) -> None:
        """A unit of ``uid`` started: its virtual time advances by ``1 / weight``."""
        current = self.virtual_time(uid)
        self._floor = current  # the started user was the lowest among those competing
        self._virtual[uid] = current + 1.0 / _weight(weight)
        if len(self._virtual) > _MAX_USERS:
            self._virtual = {u: v for u, v in self._virtual.items() if v > self._floor}

    def order(self, waiting: Iterable[W], running: Mapping[str, int], now: float) -> list[W]:
        """Every unit of ``waiting`` in the order the rule would start them, each start counted
        as one more unit running for its user. Does not change the state."""
        queues: dict[str, list[W]] = {}
        for unit in waiting:
            queues.setdefault(unit.uid, []).append(unit)
        for queue in queues.values():
            queue.sort(key=lambda u: self._key(u, now, {}, {}), reverse=True)  # the user's best last
        running_now = dict(running)
        virtual = {uid: self.virtual_time(uid) for uid in queues}
        ordered: list[W] = []
        while queues:
            heads = (queue[-1] for queue in queues.values())
            best = min(heads, key=lambda u: self._key(u, now, running_now, virtual))
            queue = queues[best.uid]
            ordered.append(queue.pop())
            if not queue:
                del queues[best.uid]
            running_now[best.uid] = running_now.get(best.uid, 0) + 1
            virtual[best.uid] += 1.0 / _weight(best.weight)
        return ordered


def allowed_priority(requested: Priority | None, allowed: Iterable[Priority]) -> Priority | None:
    """The lane a job waits in: the one it asked for if ``allowed`` holds it (``None`` if not),
    or, when it asked for none, the first allowed lane."""
    lanes = list(allowed)
    if requested is None:
        return lanes[0] if lanes else None
    return requested if requested in lanes else None
