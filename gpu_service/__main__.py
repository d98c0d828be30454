"""Entry point: ``python -m gpu_service`` (the container's command).

Serves the push endpoints and ``/healthz``; also runs a streaming-pull consumer for each enabled
pipeline whose subscription is in ``mode: pull`` in the topology (or in a plugin's spec). On SIGTERM (Cloud Run gives
about 10 s) it stops taking work first: new pushes get 503, running jobs go back to the queue at
their next checkpoint instead of waiting for a lease to expire, and pull consumers stop.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

from gpu_service.app import create_app
from gpu_service.capacity import Capacity
from gpu_service.pool import ModelPool
from gpu_service.pull import PullConsumer, flow_control_messages
from gpu_service.worker import Worker, subscription_path
from infra import sampling
from infra.blobs import BlobStore, storage_client
from infra.bus import Bus
from infra.jobs import JobStore, firestore_client
from infra.settings import Settings
from infra.topology import load_topology
from pipelines import prober
from pipelines.registry import catalog, plugin_topology

log = logging.getLogger("gpu_service")


class _Server(uvicorn.Server):
    """uvicorn, with our drain step run first when the signal arrives."""

    def __init__(self, config: uvicorn.Config, worker: Worker, consumers: list[PullConsumer]) -> None:
        super().__init__(config)
        self.worker = worker
        self.consumers = consumers

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.worker.draining.is_set():
            log.warning("signal %s: draining (running jobs go back to the queue)", signal.Signals(sig).name)
            self.worker.drain()
            for consumer in self.consumers:
                consumer.stop()
        super().handle_exit(sig, frame)


def pull_routes(settings: Settings) -> list[tuple[str, str | None]]:
    """The enabled routes this process consumes by streaming pull: the topology's, and those the
    enabled plugins declare in their specs (production has no topology file naming them)."""
    topology = load_topology(settings.topology_file) if settings.topology_file else load_topology()
    topology = topology.with_plugins(plugin_topology(settings.enabled_pipelines, settings.plugins))
    return [
        (name, lane)
        for name, lane in topology.routes()
        if name in settings.enabled_pipelines and topology.subscription(name).mode == "pull"
    ]


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sampling.start(settings.profile_dir, "gpu_service")
    prober.configure(prober.config_from(settings))
    pipelines = catalog(settings.enabled_pipelines, settings.plugins, settings.pipelines)
    worker = Worker(
        settings,
        pipelines,
        JobStore(firestore_client(settings), settings.jobs_collection),
        BlobStore(storage_client(settings)),
        ModelPool(pipelines, settings.batching, settings.model_concurrency),
        Bus(settings),
    )
    # One set of slots, shared by pushes, pulls and the redriver, so that one rule orders them all.
    capacity = Capacity(
        settings.max_concurrent_jobs, settings.pipeline_slots, aging_seconds=settings.batch_aging_seconds
    )
    consumers = [
        PullConsumer(
            worker,
            subscription_path(settings.google_cloud_project, name, lane),
            # twice the slots: held messages wait for a slot in lane order, so a later one may go first
            max_messages=2 * flow_control_messages(settings, name),
            capacity=capacity,
            wait_seconds=settings.push_wait_seconds,
        )
        for name, lane in pull_routes(settings)
    ]
    for consumer in consumers:
        consumer.start()
    _Server(server_config(create_app(worker, capacity), settings), worker, consumers).run()


def server_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """uvicorn for the push routes, its HTTP parsed by httptools (C) rather than h11 (pure
    Python, a tenth of a millisecond of CPU more per push)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        http="httptools",
    )


if __name__ == "__main__":
    main()
