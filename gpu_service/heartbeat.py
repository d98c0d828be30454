"""Throttled progress writes plus a lease-renewal thread: the running attempt's checkpoint."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from core.contract import PartialOutput, Progress
from core.errors import Cancelled, PermanentError, Preempted, bounded
from core.lifecycle import LeaseLost
from core.live import phase_of_stage

log = logging.getLogger(__name__)


class Heartbeat:
    """Renews one attempt's lease and writes its progress; the cancellation checkpoint.

    ``beat(progress_or_None)`` renews the lease (writing progress when given) and returns whether
    the client asked to cancel; it raises ``LeaseLost`` when the lease is gone. :meth:`report` is
    the pipelines' progress callback: it raises at the next checkpoint when the attempt must stop
    (cancelled, lease lost, or the worker is draining).
    """

    def __init__(
        self,
        label: str,
        beat: Callable[[Progress | None], bool],
        *,
        lease_seconds: float,
        min_interval: float,
        draining: threading.Event,
        max_run_seconds: float | None = None,
    ) -> None:
        self._label = label
        # The pipeline's maximum run time, from the claim: past it the attempt stops at its next
        # checkpoint with ``max_run_time_exceeded`` (a runaway job cannot burn a day's budget).
        self._max_run_seconds = max_run_seconds
        self._run_deadline = None if max_run_seconds is None else time.monotonic() + max_run_seconds
        self._beat = beat
        self._period = max(lease_seconds / 3, 0.2)
        self._lease_seconds = lease_seconds
        # When our own lease runs out, by our own clock: renewed at each successful beat. Past it,
        # another worker may have taken the unit, so this one stops at its next checkpoint even
        # when no write could tell it so (Firestore slow or unreachable): it fences itself.
        # (The claim's expiry was computed a moment before this object existed: keep a margin.)
        self._margin = min(1.0, 0.1 * lease_seconds)
        self._lease_deadline = time.monotonic() + lease_seconds - self._margin
        self._min_interval = min_interval
        self._draining = draining
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{label}", daemon=True)
        # The claim itself wrote the lease and the first progress: the next write can wait.
        self._last_write = time.monotonic()
        self._cancelled = False
        self._lost: LeaseLost | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def check(self) -> None:
        if self._lost is not None:
            raise self._lost
        if time.monotonic() > self._lease_deadline:
            self._lost = LeaseLost(f"the lease of {self._label} ran out before it could be renewed")
            raise self._lost
        if self._cancelled:
            raise Cancelled("cancelled at the client's request")
        if self._run_deadline is not None and time.monotonic() > self._run_deadline:
            raise PermanentError(
                f"the job ran past its pipeline's maximum run time of {self._max_run_seconds:g} s "
                "and was stopped",
                code="max_run_time_exceeded",
            )
        if self._draining.is_set():
            raise Preempted("the worker is shutting down; the job goes back to the queue")

    def report(self, fraction: float, stage: str) -> None:
        """Throttled progress write (at most one per ``min_interval``, stage changes included: a
        job shorter than that costs no progress write at all), then the checkpoint."""
        self.check()
        now = time.monotonic()
        if now - self._last_write >= self._min_interval:
            progress = Progress(
                fraction=min(max(fraction, 0.0), 1.0), stage=stage[:64], phase=phase_of_stage(stage)
            )
            self._write(progress)
        self.check()

    def flush(self) -> None:
        """Renew the lease now, taking the partial output with it (a streamed job's first chunk:
        its listener should not wait for the next throttled write)."""
        self._write(None)

    def _write(self, progress: Progress | None) -> None:
        with self._lock:
            if self._lost is not None:
                return
            started = time.monotonic()
            try:
                self._cancelled = self._beat(progress)
                # The new expiry was computed at about the start of the write: count from there.
                self._lease_deadline = started + self._lease_seconds - self._margin
            except LeaseLost as exc:
                self._lost = exc
            except Exception:
                log.warning("heartbeat for %s failed", self._label, exc_info=True)
                return
            self._last_write = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            if time.monotonic() - self._last_write >= self._period:
                self._write(None)


#: the longest text of one partial item (a transcript segment) kept on the job document
PARTIAL_TEXT_CHARS = 500


class PartialBuffer:
    """A running attempt's partial output (``job.partial``): the last ``max_items`` items, taken by
    the next progress or lease write, so partial output costs no write of its own."""

    def __init__(self, attempt: int, max_items: int) -> None:
        self._attempt = attempt
        self._max = max_items
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []
        self._count = 0
        self._dirty = False

    def add(self, item: dict[str, Any]) -> None:
        """The pipelines' partial callback (from any thread)."""
        if self._max <= 0:
            return
        item = {k: bounded(v, PARTIAL_TEXT_CHARS) if isinstance(v, str) else v for k, v in item.items()}
        with self._lock:
            self._items = [*self._items, item][-self._max :]
            self._count += 1
            self._dirty = True

    def take(self) -> PartialOutput | None:
        """What changed since the last take (``None``: nothing)."""
        with self._lock:
            if not self._dirty:
                return None
            self._dirty = False
            return PartialOutput(attempt=self._attempt, count=self._count, items=list(self._items))
