"""Live state of a followed job: its phase, and for a queued one its place in the queue and when it
should start and end (:mod:`core.live` does the arithmetic).

Only a job somebody asks about costs anything: ``GET /v1/jobs/{id}`` and the event stream compute
it (a count of the jobs queued before it, the running jobs of its pipeline, and the pipeline's
recent run times, read at most once per :data:`HISTORY_SECONDS` per pipeline). The event stream
also writes it to the job document as ``live``, at most once per ``LIVE_WRITE_SECONDS`` per job,
so apps listening to the document see it too. A job nobody follows costs no read or write more.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from core.contract import JobDoc, JobStatus, Live, read_job
from core.live import estimated_start, mean_run_seconds, phase_of

log = logging.getLogger(__name__)

#: how long a pipeline's recent run time is reused before it is read again
HISTORY_SECONDS = 30.0
#: running jobs read to see the capacity serving a pipeline
MAX_RUNNING_READ = 200
#: jobs whose last document write is remembered (the oldest are forgotten past it)
MAX_REMEMBERED = 10_000


def _whole_seconds(moment: datetime) -> datetime:
    """A plain UTC datetime to the second (Firestore's own datetime subclass does not survive
    ``replace`` as a value it can store)."""
    return datetime.fromtimestamp(int(moment.timestamp()), UTC)


def _started(fields: dict[str, Any]) -> datetime | None:
    value = fields.get("startedAt")
    return value if isinstance(value, datetime) else None


class LiveStates:
    def __init__(self, db: firestore.Client, settings: Any) -> None:
        self._db = db
        self._settings = settings
        self._lock = threading.Lock()
        self._history: dict[str, tuple[float, float | None]] = {}
        self._written: dict[str, tuple[float, dict[str, Any]]] = {}

    def _jobs(self) -> firestore.CollectionReference:
        return self._db.collection(self._settings.jobs_collection)

    def _of_pipeline(self, pipeline: str, status: JobStatus) -> firestore.Query:
        return (
            self._jobs()
            .where(filter=firestore.FieldFilter("pipeline", "==", pipeline))
            .where(filter=firestore.FieldFilter("status", "==", status.value))
        )

    def run_seconds(self, pipeline: str) -> float | None:
        """The mean run time of the pipeline's last ``LIVE_HISTORY_JOBS`` succeeded jobs (cached).
        (Production needs a composite index on ``pipeline`` + ``status`` + ``finishedAt``.)"""
        now = time.monotonic()
        with self._lock:
            cached = self._history.get(pipeline)
        if cached is not None and cached[0] > now:
            return cached[1]
        query = (
            self._of_pipeline(pipeline, JobStatus.SUCCEEDED)
            .order_by("finishedAt", direction=firestore.Query.DESCENDING)
            .limit(self._settings.live_history_jobs)
        )
        seconds = mean_run_seconds([read_job(s.to_dict() or {}) for s in query.stream()])
        with self._lock:
            self._history[pipeline] = (now + HISTORY_SECONDS, seconds)
        return seconds

    def compute(self, job: JobDoc) -> Live | None:
        """The job's live state (``None`` before it is queued and once it is final)."""
        phase = phase_of(job)
        if phase is None:
            return None
        if job.effective_status is not JobStatus.QUEUED or job.queued_at is None:
            return Live(phase=phase)
        queued = self._of_pipeline(job.pipeline, JobStatus.QUEUED)
        # (Production needs a composite index on pipeline + status + queuedAt; Terraform makes it.)
        before: Any = queued.where(filter=firestore.FieldFilter("queuedAt", "<", job.queued_at)).count()
        first = before.get()[0]  # one aggregation: a list of results per read (typed as flat)
        ahead = int((first[0] if isinstance(first, list) else first).value)
        # Only their start times: a projection, not the running jobs' whole documents.
        running_query = self._of_pipeline(job.pipeline, JobStatus.RUNNING).select(["startedAt"])
        running = [_started(s.to_dict() or {}) for s in running_query.limit(MAX_RUNNING_READ).stream()]
        per_instance = self._settings.pipeline_slots.get(job.pipeline, self._settings.max_concurrent_jobs)
        slots = max(len(running), per_instance, 1)
        run = self.run_seconds(job.pipeline)
        live = Live(
            phase=phase, position=ahead, slots=slots, run_seconds=None if run is None else round(run, 3)
        )
        if run is not None:
            now = datetime.now(UTC)
            start = estimated_start(now, ahead=ahead, running_since=running, run_seconds=run, slots=slots)
            live.estimated_start_at = _whole_seconds(start)
            live.estimated_end_at = _whole_seconds(start + timedelta(seconds=run))
        return live

    def write(self, job_id: str, live: Live) -> bool:
        """Put ``live`` on the queued job's document, at most once per ``LIVE_WRITE_SECONDS`` and only
        when it changed; conditional on the document not having changed since it was read (a job
        that just started keeps no stale place in the queue). Returns whether it wrote."""
        every = self._settings.live_write_seconds
        if every <= 0 or live.position is None:
            return False
        body = live.to_firestore()
        now = time.monotonic()
        with self._lock:
            last = self._written.get(job_id)
            if last is not None and (now - last[0] < every or last[1] == body):
                return False
            if len(self._written) >= MAX_REMEMBERED:
                for old in sorted(self._written, key=lambda k: self._written[k][0])[: MAX_REMEMBERED // 10]:
                    del self._written[old]
            self._written[job_id] = (now, body)
        ref = self._jobs().document(job_id)
        snap = ref.get()
        if not snap.exists or read_job(snap.to_dict() or {}).effective_status is not JobStatus.QUEUED:
            return False
        try:
            ref.update(
                {"live": {**body, "updatedAt": firestore.SERVER_TIMESTAMP}},
                option=self._db.write_option(last_update_time=snap.update_time),
            )
        except (gexc.FailedPrecondition, gexc.NotFound, gexc.Aborted):
            return False  # it changed meanwhile: the next refresh tries again
        return True

    def shown(self, job_id: str, job: JobDoc) -> Live | None:
        """The live state to show: a failed read costs the answer its estimate (the phase stays),
        never the answer."""
        try:
            return self.compute(job)
        except Exception:
            log.warning("job %s: live state not computed", job_id, exc_info=True)
            phase = phase_of(job)
            return None if phase is None else Live(phase=phase)

    def follow(self, job_id: str, job: JobDoc) -> Live | None:
        """For the event stream: :meth:`shown`, also put on the document (see :meth:`write`)."""
        live = self.shown(job_id, job)
        if live is not None and live.position is not None:
            try:
                self.write(job_id, live)
            except Exception:
                log.warning("job %s: live state not written", job_id, exc_info=True)
        return live

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._written.pop(job_id, None)
