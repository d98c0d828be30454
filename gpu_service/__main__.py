"""Entry point: ``python -m gpu_service`` (the container's command)."""

from __future__ import annotations

import logging

import uvicorn

from gpu_service.app import create_app
from gpu_service.models import ModelPool
from gpu_service.worker import Worker
from infra.blobs import BlobStore, storage_client
from infra.jobs import JobStore, firestore_client
from infra.settings import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = Worker(
        settings,
        JobStore(firestore_client(settings), settings.jobs_collection),
        BlobStore(storage_client(settings)),
        ModelPool(settings),
    )
    uvicorn.run(create_app(worker), host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    main()
