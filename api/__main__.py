"""Entry point: ``python -m api`` (the API service's command; the functions image carries it)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from api.app import create_app, render_error
from api.auth import TokenVerifier, UnsafeConfiguration, check_environment
from api.connections import server_options
from api.service import Api
from api.signing import UrlSigner
from functions.handlers import Deps
from infra.blobs import BlobStore, storage_client
from infra.bus import Bus
from infra.identity import SignInProviders
from infra.jobs import JobStore, firestore_client
from infra.settings import Settings
from pipelines import prober
from pipelines.registry import catalog

log = logging.getLogger("api")


def build(settings: Settings) -> Api:
    """Everything the API needs, built once (the functions' own dependencies among them)."""
    check_environment(settings)
    prober.configure(prober.config_from(settings))
    db = firestore_client(settings)
    gcs = storage_client(settings)
    deps = Deps(
        settings=settings,
        catalog=catalog(settings.enabled_pipelines, settings.plugins, settings.pipelines),
        jobs=JobStore(db, settings.jobs_collection, settings.quotas_collection),
        blobs=BlobStore(gcs),
        bus=Bus(settings),
        identities=SignInProviders.from_settings(settings),
    )
    return Api(deps=deps, verifier=TokenVerifier(settings), signer=UrlSigner(settings, gcs), db=db)


def main() -> int:
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        api = build(settings)
    except UnsafeConfiguration as exc:
        log.critical("refusing to start: %s", exc)
        return 2
    uvicorn.run(
        create_app(api),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        # httptools (a pinned dependency) parses HTTP in C: h11, uvicorn's pure-Python parser,
        # costs more CPU per request
        **server_options(settings, render_error, "httptools"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
