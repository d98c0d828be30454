"""Multi-part jobs: prepare once, fan the parts out on their own routes, join when the last ends.

The job's own message runs the pipeline's ``prepare``; its files are published for the parts and
its outputs become the state they (and the join) receive. Each part (a lane of the spec, or shard
*i* of one that the prepare step asked for) is then claimed, leased, retried and committed like a
job, on whichever instance takes its message. The part that ends last joins, in the same
compare-and-set write as its own end, through the spec's pure ``join``: no model is loaded for it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.contract import ErrorInfo, JobDoc, JobMessage, JobStatus, Prepared, Progress, Timings
from core.lifecycle import PREPARE_WEIGHT, Ending
from core.routes import route
from core.spec import MultiPartPipeline, PipelineModel, PipelineSpec, RunContext
from gpu_service.attempt import Attempt, fit_in_document, seconds_between, utcnow

if TYPE_CHECKING:
    from gpu_service.heartbeat import Heartbeat
    from gpu_service.worker import Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Joiner:
    """Ends a multi-part job from its parts (called inside the last part's compare-and-set)."""

    spec: PipelineSpec

    def __call__(self, job: JobDoc) -> Ending:
        parts = job.parts or {}
        if any(p.status is JobStatus.CANCELLED for p in parts.values()):
            return Ending(JobStatus.CANCELLED, clear_outputs=True)
        prepared = job.prepared or Prepared()
        done = {name: (p.outputs if p.status is JobStatus.SUCCEEDED else None) for name, p in parts.items()}
        inputs = self.spec.inputs.model_validate(job.inputs)
        outputs: dict[str, Any] = self.spec.run_join(inputs, prepared.state, done).model_dump(mode="json")
        files = dict(prepared.files)
        for p in parts.values():
            files.update(p.files or {})
        outputs["files"] = files
        total = seconds_between(job.created_at, utcnow())
        timings = job.timings.model_copy(update={"total": total}) if job.timings else Timings(total=total)
        failed = [(name, p) for name, p in parts.items() if p.status is JobStatus.FAILED]
        if failed:
            name, part = failed[0]
            error = part.error or ErrorInfo(code="failed", message="failed")
            error = error.model_copy(
                update={"part": name, "message": f"part {name!r} failed: {error.message}", "retryable": False}
            )
            return Ending(JobStatus.FAILED, error=error, outputs=fit_in_document(outputs), timings=timings)
        return Ending(
            JobStatus.SUCCEEDED,
            outputs=fit_in_document(outputs),
            progress=Progress(fraction=1.0, stage="done"),
            timings=timings,
        )


def _scaled(report: Any, start: float, end: float) -> Any:
    def scaled(fraction: float, stage: str) -> None:
        report(start + (end - start) * min(max(fraction, 0.0), 1.0), stage)

    return scaled


def prepare(
    worker: Worker,
    attempt: Attempt,
    inputs: PipelineModel,
    files: dict[str, Path],
    workdir: Path,
    beat: Heartbeat,
) -> JobStatus | None:
    """The job's own step: prepare, publish what the parts need, fan them out."""
    pipeline: MultiPartPipeline = worker.load(attempt, beat)  # type: ignore[assignment]
    scaled = _scaled(beat.report, 0.0, PREPARE_WEIGHT)
    result = worker.timed(
        attempt,
        lambda ctx: pipeline.prepare(inputs, RunContext(ctx.job_id, ctx.workdir, ctx.files, scaled)),
        files,
        workdir,
        beat,
    )
    keys = attempt.spec.part_keys(result.shards)
    uris = worker.upload(attempt, result.files, attempt.results_prefix + "prepared/")
    prepared = Prepared(files=uris, state=result.outputs.model_dump(mode="json"))
    worker.jobs.fan_out(attempt.ref, worker.owner, attempt.number, prepared, keys, attempt.job_timings())
    for key in keys:
        # A failure here leaves the part queued; the sweeper re-publishes it.
        worker.publish_part(attempt.ref.job_id, attempt.spec.name, key, attempt.job.uid)
    log.info("%s prepared; parts %s published", attempt.label, ", ".join(keys))
    return None


def run_part(
    worker: Worker, attempt: Attempt, inputs: PipelineModel, workdir: Path, beat: Heartbeat
) -> JobStatus | None:
    """One part: download what prepare left, run it, publish its files, end it (maybe the job)."""
    assert attempt.ref.part is not None
    started = time.perf_counter()
    prepared = attempt.job.prepared or Prepared()
    beat.report(0.0, "downloading")
    (workdir / "prepared").mkdir()
    files = {
        key: worker.blobs.download(uri, workdir / "prepared" / key) for key, uri in prepared.files.items()
    }
    pipeline: MultiPartPipeline = worker.load(attempt, beat)  # type: ignore[assignment]
    part = attempt.ref.part
    result = worker.timed(
        attempt, lambda ctx: pipeline.run_part(part, inputs, ctx, prepared.state), files, workdir, beat
    )
    uris = worker.upload(attempt, result.files, attempt.results_prefix)
    ending = Ending(
        JobStatus.SUCCEEDED,
        outputs=result.outputs.model_dump(mode="json"),
        files=uris,
        seconds=round(time.perf_counter() - started, 3),
        progress=Progress(fraction=1.0, stage="done"),
    )
    return worker.finish(attempt, ending)


def part_message(job_id: str, pipeline: str, key: str, uid: str | None = None) -> tuple[JobMessage, str]:
    """The message for part ``key`` of a job, and the topic it goes to."""
    message = JobMessage(job_id=job_id, pipeline=pipeline, part=key, uid=uid)
    return message, route(pipeline, message.ref.lane).topic
