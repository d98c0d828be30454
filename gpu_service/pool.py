"""The model pool: each pipeline is loaded once per process and shared by every job.

The pool also holds the process's one GPU memory budget (:class:`~pipelines.imaging.memory.GpuBudget`):
each pipeline loads under a lease on it, its planner places the weights against its share (what
the pipelines loaded before it keep on the GPU, and the headroom of those that may run beside it,
taken off), and a pipeline that cannot fit is refused at start with the numbers (``failed`` in
``/healthz``, its jobs end with ``pipeline_unavailable``). A pipeline that does not plan through
the budget (CTranslate2 Whisper, VibeVoice) is charged what its load took from the device.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel

from core.errors import PermanentError
from core.spec import BatchingPipeline, Catalog, Pipeline, PipelineSpec, ProgressFn, RunContext, RunResult
from gpu_service.batching import Batcher
from infra.settings import Batching
from pipelines.imaging.memory import GpuBudget, Grant, lend

#: Left free of the detected budget: the CUDA context and allocator slack of the libraries that
#: allocate outside torch (CTranslate2).
BUDGET_RESERVE_BYTES = 512 * 2**20

log = logging.getLogger(__name__)


class Health(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


@dataclass
class Loaded:
    pipeline: Pipeline
    load_seconds: float


class ModelGate:
    """At most ``slots`` units on the model at once.

    A unit holds one of the service's slots from its claim to its commit, but the model only
    for its run: with fewer model turns than slots, the claims, downloads, uploads and commits
    of some units overlap the model work of others, and the GPU does not wait on Firestore.
    """

    POLL_SECONDS = 0.5

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._free = threading.Semaphore(slots)
        self._lock = threading.Lock()
        self.running = 0
        self.busy_seconds = 0.0  # model time summed over units, for the busy fraction
        self.started = time.monotonic()

    @contextmanager
    def turn(self, report: ProgressFn) -> Iterator[float]:
        """Hold a model turn; yields the seconds waited for it. While waiting, ``report`` is
        called every half second: the lease stays alive and a cancel ends the wait."""
        start = time.perf_counter()
        while not self._free.acquire(timeout=self.POLL_SECONDS):
            report(0.0, "waiting for the model")
        waited = time.perf_counter() - start
        with self._lock:
            self.running += 1
        began = time.perf_counter()
        try:
            yield waited
        finally:
            with self._lock:
                self.running -= 1
                self.busy_seconds += time.perf_counter() - began
            self._free.release()

    def stats(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "slots": self.slots,
            "running": self.running,
            "busy_fraction": round(self.busy_seconds / (elapsed * self.slots), 3),
        }


class ModelPool:
    """Loads the catalog's pipelines lazily or at start-up, at most once each, thread-safely."""

    def __init__(
        self,
        catalog: Catalog,
        batching: Mapping[str, Batching] | None = None,
        model_concurrency: int | None = None,
        gpu_budget: GpuBudget | None = None,
    ) -> None:
        """``gpu_budget``: the GPU memory the pipelines share; by default what is free on the CUDA
        device at the first load (none without CUDA). Tests force an L4's with ``GpuBudget(22e9)``."""
        self._catalog = catalog
        self._model_concurrency = model_concurrency
        self._budget = gpu_budget
        self._budget_detected = gpu_budget is not None
        #: set when fewer units may be on the model than run at once (MODEL_CONCURRENCY)
        self.gate = ModelGate(model_concurrency) if model_concurrency else None
        self._batching = dict(batching or {})
        self._batchers: dict[str, Batcher] = {}
        self._loaded: dict[str, Loaded] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.health = Health.STARTING
        self.error: str | None = None
        #: pipelines whose model could not be loaded, and why: their jobs fail with a clear error
        self.failed: dict[str, str] = {}

    def _ensure(self, spec: PipelineSpec) -> tuple[Loaded, bool]:
        with self._guard:
            lock = self._locks.setdefault(spec.name, threading.Lock())
        with lock:
            loaded = self._loaded.get(spec.name)
            if loaded is not None:
                return loaded, False
            start = time.perf_counter()
            pipeline = self._load(spec)
            loaded = self._loaded[spec.name] = Loaded(pipeline, time.perf_counter() - start)
            log.info("loaded pipeline %s in %.2fs", spec.name, loaded.load_seconds)
            return loaded, True

    def _load(self, spec: PipelineSpec) -> Pipeline:
        """Load under a lease on the GPU budget, if there is one."""
        budget = self.gpu_budget()
        config = self._catalog.config(spec)
        if budget is None:
            return spec.load(config)
        settings = self._batching.get(spec.name)
        max_batch = settings.max_batch if settings is not None else 1
        before = _cuda_free_bytes()
        with lend(budget, spec.name, max_batch=max_batch) as lease:
            try:
                pipeline = spec.load(config)
            except BaseException:
                budget.release(spec.name)
                raise
            if not lease.taken:
                after = _cuda_free_bytes()
                used = before - after if before is not None and after is not None else 0
                budget.grant(spec.name, Grant(max(0, used), 0))
        log.info("GPU budget after %s: %s", spec.name, budget.summary())
        return pipeline

    def gpu_budget(self) -> GpuBudget | None:
        """The process's GPU memory budget (detected once, at the first load), or ``None`` without CUDA."""
        with self._guard:
            if not self._budget_detected:
                self._budget_detected = True
                free = _cuda_free_bytes()
                if free is not None:
                    self._budget = GpuBudget(
                        max(0, free - BUDGET_RESERVE_BYTES),
                        concurrent=self._model_concurrency,
                        source="free CUDA memory at start",
                    )
            return self._budget

    def get(self, spec: PipelineSpec) -> tuple[Pipeline, float]:
        """The loaded pipeline, and the load seconds this job paid (0 when it was warm).

        Raises:
            PermanentError: the pipeline's model could not be loaded on this service.
        """
        if spec.name in self.failed:
            raise PermanentError(
                f"pipeline {spec.name} cannot run here: its model could not be loaded ({self.failed[spec.name]})",
                code="pipeline_unavailable",
            )
        loaded, fresh = self._ensure(spec)
        return loaded.pipeline, loaded.load_seconds if fresh else 0.0

    def preload(self, names: list[str]) -> None:
        """Load the named pipelines. The service is ready when at least one can serve; one that
        cannot is reported (``failed``, ``/healthz``) and its jobs fail with ``pipeline_unavailable``
        rather than keeping every other pipeline from starting."""
        for name in names:
            spec = self._catalog.get(name)
            if spec is None:
                self.failed[name] = "not installed"
                log.error("ENABLED_PIPELINES names %r, which is not installed", name)
                continue
            try:
                self._ensure(spec)
            except Exception as exc:
                self.failed[name] = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("pipeline %s could not be loaded; its jobs will fail", name)
        if self._loaded or not names:
            self.health = Health.READY
        else:
            self.health = Health.FAILED
        if self.failed:
            self.error = "; ".join(f"{name}: {why}" for name, why in sorted(self.failed.items()))

    def states(self) -> dict[str, str]:
        """Each enabled pipeline: ``ready``, ``loading`` or why it failed."""
        out = dict.fromkeys(self._loaded, "ready")
        out.update({name: f"failed: {why}" for name, why in self.failed.items()})
        for name in self._catalog.names:
            out.setdefault(name, "loading" if self.health is Health.STARTING else "not loaded")
        return out

    def infer(
        self, spec: PipelineSpec, pipeline: Pipeline, inputs: BaseModel, ctx: RunContext
    ) -> RunResult[Any]:
        """Run one job on a loaded pipeline: the one place every job passes on its way to the model.
        A pipeline with batching configured (and a ``run_batch``) runs with its concurrent jobs."""
        batcher = self._batcher(spec.name, pipeline)
        if batcher is None:
            return pipeline.run(inputs, ctx)
        return batcher.submit(inputs, ctx)

    @contextmanager
    def model_turn(self, spec: PipelineSpec, report: ProgressFn) -> Iterator[float | None]:
        """Around one unit's model work: waits for a model turn when the gate is set; yields the
        seconds waited (None: no gate). A batching pipeline's jobs pass freely: they must all be
        running to meet in one batch, and the batch is one model call."""
        if self.gate is None or spec.name in self._batching_names():
            yield None
            return
        with self.gate.turn(report) as waited:
            yield waited

    def _batching_names(self) -> set[str]:
        return {name for name, b in self._batching.items() if b.max_batch >= 2}

    def _batcher(self, name: str, pipeline: Pipeline) -> Batcher | None:
        settings = self._batching.get(name)
        if settings is None or settings.max_batch < 2 or not hasattr(pipeline, "run_batch"):
            return None
        with self._guard:
            if name not in self._batchers:
                batching = cast(BatchingPipeline, pipeline)
                self._batchers[name] = Batcher(name, batching, settings.max_batch, settings.max_wait_ms)
            return self._batchers[name]

    def batch_stats(self) -> dict[str, dict[str, float]]:
        return {
            name: {"batches": b.stats.batches, "jobs": b.stats.jobs, "mean_size": round(b.stats.mean_size, 2)}
            for name, b in self._batchers.items()
        }

    def load_seconds(self) -> dict[str, float]:
        return {name: round(v.load_seconds, 3) for name, v in self._loaded.items()}


def _cuda_free_bytes() -> int | None:
    """Free memory on the current CUDA device, or ``None`` without torch or CUDA.

    On a machine without an NVIDIA device node torch is not imported for this (the local stack's
    CPU-only service would pay its import for nothing), unless a pipeline imported it already.
    """
    if "torch" not in sys.modules and not Path("/dev/nvidiactl").exists():
        return None
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)
