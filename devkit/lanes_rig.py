"""Priority lanes on the emulators: the functions' handler, the GPU worker, its capacity and its
redriver in this process, on private collections, with the ``metered`` stand-in pipeline (one job
per model call). What the lane tests and bench/lanes.py drive.

Nothing subscribes to the jobs' topic: every queued job is found in Firestore and started by the
redriver, through the same capacity queue and ordering rule (core/lanes.py) as a push or a pull.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from core.contract import JobDoc, JobStatus, read_job
from core.lanes import Priority
from core.quota import QuotaPolicy
from core.routes import route
from devkit.cost_rig import Rig, make_rig
from gpu_service.capacity import Capacity
from gpu_service.redrive import Redriver
from infra.identity import SignInProviders
from infra.jobs import firestore_client
from infra.settings import Settings


@dataclass
class LanesRig:
    rig: Rig
    capacity: Capacity
    redriver: Redriver

    def submit(self, uid: str, seconds: float, priority: Priority | None = None, label: str = "") -> str:
        extra: dict[str, Any] = {"priority": priority} if priority is not None else {}
        job_id, moved = self.rig.submit(
            uid, {"seconds": seconds, "label": label or uuid.uuid4().hex}, **extra
        )
        assert moved in (JobStatus.QUEUED, JobStatus.REJECTED), moved
        return job_id

    def job(self, job_id: str) -> JobDoc:
        return self.rig.job(job_id)

    @functools.cached_property
    def _db(self) -> Any:
        return firestore_client(self.rig.settings)

    def jobs(self, job_ids: list[str]) -> list[JobDoc]:
        """The jobs, in one read."""
        refs = [self.rig.jobs.ref(j) for j in job_ids]
        snaps = {snap.id: snap for snap in self._db.get_all(refs)}
        return [read_job(snaps[j].to_dict() or {}) for j in job_ids]

    def wait_final(self, job_ids: list[str], timeout: float = 600) -> list[JobDoc]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs(job_ids)
            if all(j.status is not None and j.status.is_final for j in jobs):
                return jobs
            if time.monotonic() > deadline:
                left = sum(1 for j in jobs if not (j.status and j.status.is_final))
                raise AssertionError(f"{left} jobs did not end in {timeout} s")
            time.sleep(0.3)

    @contextlib.contextmanager
    def running(self) -> Iterator[LanesRig]:
        """The redriver runs queued work while in the block."""
        self.redriver.start()
        try:
            yield self
        finally:
            self.redriver.stop()


def ensure_topic(settings: Settings) -> None:
    """The jobs' topic exists (the handler publishes to it; nothing subscribes)."""
    publisher = pubsub_v1.PublisherClient()
    with contextlib.suppress(gexc.AlreadyExists):
        publisher.create_topic(
            name=publisher.topic_path(settings.google_cloud_project, route("metered").topic)
        )


def make_lanes_rig(
    base: Settings,
    *,
    slots: int,
    aging_seconds: float,
    quotas: QuotaPolicy,
    poll_seconds: float = 0.05,
    with_tiers: bool = False,
) -> LanesRig:
    """A rig whose worker runs ``slots`` jobs at once; ``with_tiers`` looks users' sign-in
    providers up in the Auth emulator, so that ``quotas.tiers`` apply."""
    rig = make_rig(
        base,
        uuid.uuid4().hex[:8],
        max_concurrent_jobs=slots,
        batching={},
        reuse_pipelines=[],
        quotas=quotas,
        batch_aging_seconds=aging_seconds,
    )
    if with_tiers:
        rig.deps = dataclasses.replace(rig.deps, identities=SignInProviders(rig.settings, ttl_seconds=600))
    capacity = Capacity(slots, aging_seconds=aging_seconds)
    redriver = Redriver(
        rig.worker,
        capacity,
        ["metered"],
        after_seconds=0.0,
        poll_seconds=poll_seconds,
        reserve_seconds=30.0,
    )
    return LanesRig(rig, capacity, redriver)


def start_order(jobs: list[tuple[str, JobDoc]]) -> list[str]:
    """Job ids by the time their run started."""
    started = [(job.started_at, job_id) for job_id, job in jobs if job.started_at is not None]
    return [job_id for _, job_id in sorted(started)]
