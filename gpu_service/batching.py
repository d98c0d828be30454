"""Dynamic batching: jobs of one pipeline that arrive close together run as one model call.

Each job's worker thread calls :meth:`Batcher.submit` and blocks until its own result (or its own
exception) is ready. A dispatcher thread takes the oldest waiting job, gives it up to
``max_wait_ms`` to gather batch-mates with the same ``batch_key`` (at most ``max_batch``), and runs
them through the pipeline's ``run_batch``. Batches run one at a time (they share the model).

What stays per job: the result and its files, the seed (a generator per job), progress (reported
to every job of the batch), cancellation and failures (``run_batch`` returns an exception for the
job it concerns). A batch that fails as a whole (out of GPU memory, say) is split in halves and
retried, down to single jobs, before any job is failed: a bad batch-mate never takes the others
down with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.spec import BatchingPipeline, RunContext, RunResult
from core.usage import apportion

log = logging.getLogger(__name__)


@dataclass
class _Item:
    inputs: Any
    ctx: RunContext
    key: Hashable
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: RunResult[Any] | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    batches: int = 0
    jobs: int = 0
    splits: int = 0

    @property
    def mean_size(self) -> float:
        return self.jobs / self.batches if self.batches else 0.0


class Batcher:
    def __init__(self, name: str, pipeline: BatchingPipeline, max_batch: int, max_wait_ms: float) -> None:
        self.name = name
        self.pipeline = pipeline
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self._waiting: list[_Item] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, inputs: Any, ctx: RunContext) -> RunResult[Any]:
        """Run one job as part of a batch; returns its result or raises its own exception."""
        item = _Item(inputs, ctx, self.pipeline.batch_key(inputs))
        with self._cond:
            self._waiting.append(item)
            self._cond.notify_all()
        item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _take(self) -> list[_Item]:
        """The next batch: the oldest job and up to max_batch - 1 waiting jobs with its key."""
        with self._cond:
            while not self._waiting:
                self._cond.wait()
            first = self._waiting[0]
            deadline = first.arrived + self.max_wait
            while True:
                mates = [i for i in self._waiting if i.key == first.key]
                left = deadline - time.monotonic()
                if len(mates) >= self.max_batch or left <= 0:
                    break
                self._cond.wait(left)
            batch = mates[: self.max_batch]
            for item in batch:
                self._waiting.remove(item)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            self.stats.batches += 1
            self.stats.jobs += len(batch)
            self._run(batch)

    def _run(self, batch: Sequence[_Item]) -> None:
        started = time.perf_counter()
        try:
            try:
                results = self.pipeline.run_batch([(i.inputs, i.ctx) for i in batch])
            finally:
                charge(batch, time.perf_counter() - started, self.pipeline)
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} jobs")
        except Exception as exc:
            if len(batch) == 1:
                self._settle(batch[0], None, exc)
                return
            # The batch failed as a whole: split it and try the halves, before failing anyone.
            self.stats.splits += 1
            log.warning(
                "%s: a batch of %d failed (%s); splitting it", self.name, len(batch), type(exc).__name__
            )
            half = len(batch) // 2
            self._run(batch[:half])
            self._run(batch[half:])
            return
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                self._settle(item, None, result)
            else:
                self._settle(item, result, None)

    @staticmethod
    def _settle(item: _Item, result: RunResult[Any] | None, error: BaseException | None) -> None:
        item.result, item.error = result, error
        item.done.set()


def charge(batch: Sequence[_Item], seconds: float, pipeline: BatchingPipeline) -> None:
    """Charge one model call's time to its jobs by their work (``batch_work``; else one each).
    A job in several calls (a failed batch split in halves) is charged for each."""
    work_of = getattr(pipeline, "batch_work", None)
    works = []
    for item in batch:
        try:
            works.append(float(work_of(item.inputs)) if work_of else 1.0)
        except Exception:
            works.append(1.0)
    for item, share, work in zip(batch, apportion(seconds, works), works, strict=True):
        meter = getattr(item.ctx, "meter", None)
        if meter is None:
            continue
        meter["gpu_seconds"] = meter.get("gpu_seconds", 0.0) + share
        meter["batch_seconds"] = meter.get("batch_seconds", 0.0) + seconds
        meter["batch_size"] = max(meter.get("batch_size", 0.0), float(len(batch)))
        meter["work"] = work
