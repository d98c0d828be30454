"""Live state: what a job is doing now, and for a queued one, when it should start and end.

Pure functions of what the backend already knows: the job, the jobs of its pipeline queued
before it, the ones running now (the capacity serving it) and the pipeline's recent run times.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from datetime import datetime, timedelta

from core.contract import JobDoc, JobStatus, Phase

#: the worker's own stages (gpu_service/worker.py) -> phases; every other running stage is RUNNING
_STAGE_PHASES = {
    "starting": Phase.RUNNING,
    "downloading": Phase.DOWNLOADING,
    "loading model": Phase.LOADING_MODEL,
    "uploading": Phase.UPLOADING,
}


def phase_of_stage(stage: str) -> Phase:
    return _STAGE_PHASES.get(stage, Phase.RUNNING)


def phase_of(job: JobDoc) -> Phase | None:
    """The job's phase while it is queued or running; ``None`` before it is queued and once final."""
    status = job.effective_status
    if status is JobStatus.QUEUED:
        return Phase.WAITING_FOR_GPU
    if status is not JobStatus.RUNNING:
        return None
    if job.progress is None:
        return Phase.RUNNING
    return job.progress.phase or phase_of_stage(job.progress.stage)


def mean_run_seconds(finished: Sequence[JobDoc]) -> float | None:
    """The mean run time (claimed -> finished) of recently succeeded jobs; ``None`` without any."""
    spans = [
        (job.finished_at - job.started_at).total_seconds()
        for job in finished
        if job.reused_from is None  # a reused result took no run time
        and job.started_at is not None
        and job.finished_at is not None
        and job.finished_at >= job.started_at
    ]
    return sum(spans) / len(spans) if spans else None


def estimated_start(
    now: datetime,
    *,
    ahead: int,
    running_since: Sequence[datetime | None],
    run_seconds: float,
    slots: int,
) -> datetime:
    """When a queued job should start: ``ahead`` jobs start before it, each taking ``run_seconds``
    on one of ``slots`` slots, which are now busy with jobs started at ``running_since``.

    Each running job frees its slot ``run_seconds`` after it started (now, if it is late); a free
    slot takes the next job in the queue; the job starts when a slot is free after all ahead of it
    have started.
    """
    run = timedelta(seconds=max(run_seconds, 0.0))
    slots = max(slots, len(running_since), 1)
    free = [max(now, (since or now) + run) for since in running_since]
    free += [now] * (slots - len(free))
    heapq.heapify(free)
    for _ in range(max(ahead, 0)):
        heapq.heappush(free, heapq.heappop(free) + run)
    return free[0]
