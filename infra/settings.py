"""The one settings object, read from the environment in one place.

Every deployable (the functions, the GPU service, the CLI, the local stack) builds a
:class:`Settings` in its entry point and passes it down; nothing else reads ``os.environ``.
The Google client libraries read the standard emulator variables themselves
(``PUBSUB_EMULATOR_HOST``, ``FIRESTORE_EMULATOR_HOST``, ``STORAGE_EMULATOR_HOST``); they are
mirrored here so that code can tell whether it runs against emulators.

Pipeline settings are nested: ``PIPELINES__TRANSCRIBE__MODEL_DIR=/models/whisper`` becomes
``settings.pipelines["transcribe"]["model_dir"]`` and is validated by that pipeline's own
config model (``core.spec.Catalog.config``). Settings hold values only: which pipelines are
enabled is resolved once per entry point by ``pipelines.registry.catalog(settings...)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.quota import QuotaPolicy

#: the voices OpenAI's speech API names; OPENAI_VOICES maps them to configured tts voices
OPENAI_VOICE_NAMES = frozenset(
    {
        "alloy",
        "ash",
        "ballad",
        "cedar",
        "coral",
        "echo",
        "fable",
        "marin",
        "nova",
        "onyx",
        "sage",
        "shimmer",
        "verse",
    }
)
VOICE_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")


class Batching(BaseModel):
    """Dynamic batching of one pipeline's jobs (the pipeline must support it: ``run_batch``)."""

    max_batch: int = Field(4, ge=1, le=64, description="jobs in one model call at most")
    max_wait_ms: float = Field(
        30.0, ge=0, le=5000, description="how long the first job waits for batch-mates"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_nested_delimiter="__", env_ignore_empty=True, extra="ignore", case_sensitive=False
    )

    # Where things are.
    google_cloud_project: str = Field("demo-gpu-jobs", description="GCP project id")
    media_bucket: str = Field("demo-gpu-jobs-media", description="bucket for uploads/ and results/")
    jobs_collection: str = Field("jobs", description="Firestore collection of the job documents")

    # Emulators (set by the local stack; empty in production).
    pubsub_emulator_host: str | None = Field(None, description="the Pub/Sub emulator, host:port")
    firestore_emulator_host: str | None = Field(None, description="the Firestore emulator, host:port")
    storage_emulator_host: str | None = Field(None, description="the Storage emulator, as a URL")
    firebase_auth_emulator_host: str | None = Field(
        None, description="the Auth emulator (its tokens are unsigned: never set in production)"
    )
    environment: Literal["production", "local"] = Field(
        "production", description="'local' only on the local stack; production refuses emulator auth"
    )

    # Which pipelines this deployment serves (the functions reject the others).
    plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="extra pipelines as 'module:SPEC' import paths"
    )
    enabled_pipelines: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["transcribe"], description="pipelines served; jobs for others are rejected"
    )
    pipelines: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="each pipeline's config, e.g. PIPELINES__TRANSCRIBE__MODEL_DIR (below)",
    )
    max_input_bytes: int = Field(
        2 * 2**30, gt=0, description="deployment-wide cap on any input object, on top of each pipeline's"
    )
    max_inputs_bytes: int = Field(
        64 * 2**10, gt=0, description="cap on a job's inputs as JSON (keeps job documents far below 1 MiB)"
    )
    # Measuring media inputs (pipelines/prober.py): the functions, the API and the GPU service.
    media_probers: int = Field(
        2,
        ge=0,
        le=16,
        description="warm PyAV processes reading media headers per process (0: ffprobe per input)",
    )
    media_prober_memory_mb: int = Field(
        512, ge=1, description="address space one probe may add to a warm prober process"
    )
    media_prober_cpu_seconds: float = Field(
        10.0, gt=0, description="CPU time one probe may take before the kernel ends its process"
    )
    media_prober_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="one probe's wall-clock limit: past it, a new process, and ffprobe reads that file",
    )

    # The GPU service.
    host: str = Field("0.0.0.0", description="address the GPU service listens on")
    port: int = Field(8080, description="port the GPU service listens on (Cloud Run sets PORT)")
    worker_id: str = Field("", description="lease owner name; defaults to host:pid")
    max_concurrent_jobs: int = Field(1, ge=1, description="units of work run at once per instance")
    model_concurrency: int | None = Field(
        None,
        ge=1,
        description=(
            "units on the model at once (default: MAX_CONCURRENT_JOBS); set it below "
            "MAX_CONCURRENT_JOBS so that claims, downloads, uploads and commits of some units "
            "overlap the model work of others"
        ),
    )
    pipeline_slots: dict[str, int] = Field(
        default_factory=dict, description="optional per-pipeline caps within max_concurrent_jobs"
    )
    push_wait_seconds: float = Field(
        30.0, ge=0, description="how long a push waits for a free slot before answering 429"
    )
    batch_aging_seconds: float = Field(
        60.0, ge=0, description="batch work waiting this long competes as interactive work (never starved)"
    )
    batching: dict[str, Batching] = Field(
        default_factory=dict,
        description='per pipeline, e.g. BATCHING=\'{"edit": {"max_batch": 4, "max_wait_ms": 30}}\'',
    )
    redrive: bool = Field(True, description="run queued work straight from Firestore when a slot is idle")
    redrive_after_seconds: float = Field(
        5.0, ge=0, description="queued this long: the redriver may take it (younger work is the push path's)"
    )
    redrive_poll_seconds: float = Field(5.0, gt=0, description="how often an idle instance looks for work")
    lease_seconds: float = Field(120.0, gt=0, description="a claim's lease, renewed while the work runs")
    max_run_seconds: float = Field(
        3600.0,
        gt=0,
        description="an attempt running longer stops at its next checkpoint (max_run_time_exceeded)",
    )
    pipeline_max_run_seconds: dict[str, float] = Field(
        default_factory=dict, description='per pipeline, in place of MAX_RUN_SECONDS, e.g. {"t2v": 1800}'
    )
    max_attempts: int = Field(5, ge=1, description="run attempts before a retryable error fails the job")
    progress_min_interval_seconds: float = Field(1.0, ge=0, description="progress write throttle")
    partial_max_items: int = Field(
        20,
        ge=0,
        le=200,
        description="partial output items (transcript segments) kept on a running job's document",
    )
    shutdown_grace_seconds: float = Field(8.0, ge=0, description="Cloud Run allows about 10 s after SIGTERM")
    topology_file: Path | None = Field(None, description="another topology file than infra/topology.yaml")
    preload_pipelines: bool = Field(True, description="load enabled pipelines at start-up")

    # Push authentication: Pub/Sub signs each push with a Google OIDC ID token for the push
    # subscription's service account; the GPU service verifies it (gpu_service/auth.py).
    push_auth: Literal["auto", "oidc", "off"] = Field(
        "auto", description="verify push tokens: auto = on unless running against the emulators"
    )
    push_audience: str | None = Field(
        None,
        description="expected 'aud' claim: the push subscriptions' oidc_token audience "
        "(without one, Pub/Sub uses the push endpoint URL); required when verifying",
    )
    push_service_account: str | None = Field(
        None, description="the service account email the push subscriptions sign as; required when verifying"
    )
    push_certs_url: str = Field(
        "https://www.googleapis.com/oauth2/v1/certs",
        description="Google's signing certificates as a {key id: PEM certificate} JSON document",
    )
    push_clock_skew_seconds: int = Field(
        10, ge=0, le=300, description="leeway on the token's iat and exp, for clock drift"
    )

    # Per-user quotas, enforced where every job is created (functions/handlers.handle_job_created).
    quotas: QuotaPolicy = Field(default_factory=QuotaPolicy, description="per-user caps as JSON (below)")
    quotas_collection: str = Field(
        "quotas", description="the per-user ledgers (closed to clients by the rules)"
    )
    results_ttl_days: int = Field(
        30,
        ge=1,
        le=3650,
        description="the results/ folder's TTL in the bucket (Terraform bucket_config.ttl_days.results): "
        "the most retentionDays a job may ask",
    )
    reuse_pipelines: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="pipelines whose finished results are reused for the same user's same content, "
        "inputs and model (docs/cost.md); opt-in",
    )
    quota_tier_cache_seconds: float = Field(
        60.0, ge=0, le=3600, description="how long a user's sign-in provider (their quota tier) is kept"
    )

    # The HTTP API (api/).
    api_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="web app origins allowed to call the API from a browser"
    )
    api_check_revoked: bool | None = Field(
        None,
        description="also ask Firebase Auth whether the token was revoked or its user disabled; "
        "default: on in production, off elsewhere",
    )
    api_revocation_cache_seconds: float = Field(
        30.0,
        ge=0,
        le=300,
        description="how long the answer about a user's revocation is kept (the longest a revoked "
        "token still passes); 0 asks Firebase Auth on every request",
    )
    api_app_check: bool = Field(
        False, description="require a Firebase App Check token (X-Firebase-AppCheck) on every API call"
    )
    app_check_jwks_url: str = Field(
        "https://firebaseappcheck.googleapis.com/v1/jwks",
        description="App Check's public keys (a JWK set); another URL only for tests",
    )
    api_max_wait_seconds: float = Field(
        60.0, ge=0, le=600, description="the longest 'wait' a create may ask for (the request stays open)"
    )
    upload_url_seconds: int = Field(900, ge=1, le=7 * 24 * 3600, description="lifetime of signed upload URLs")
    download_url_seconds: int = Field(
        900, ge=1, le=7 * 24 * 3600, description="lifetime of signed result URLs"
    )
    signing_service_account: str | None = Field(
        None, description="production: the account whose key signs URLs through IAM (no key file)"
    )
    signing_key_file: Path | None = Field(
        None, description="local only: a throwaway service account key the local stack generates"
    )
    storage_public_url: str | None = Field(
        None, description="where signed URLs point; default https://storage.googleapis.com"
    )
    sse_keepalive_seconds: float = Field(
        15.0, gt=0, description="comment lines that keep an idle stream open"
    )
    live_refresh_seconds: float = Field(
        2.0, gt=0, description="how often a followed queued job's position and estimate are computed again"
    )
    live_write_seconds: float = Field(
        10.0,
        ge=0,
        description="a followed queued job's 'live' field is written at most this often (0: never)",
    )
    live_history_jobs: int = Field(
        20, ge=1, le=200, description="recent succeeded jobs of a pipeline whose run times the estimate uses"
    )
    # Load shedding: past these caps the API answers 429 (the caller's own cap) or 503 (the
    # instance's) with Retry-After, instead of slowing everyone down.
    api_max_body_bytes: int = Field(
        1 * 2**20,
        gt=0,
        le=32 * 2**20,
        description="largest request body; refused with 413 before anything reads it (Cloud Run allows 32 MiB)",
    )
    api_max_waits_per_user: int = Field(
        4, ge=1, description="a user's requests waiting for a job at once (?wait, POST /v1/audio/speech)"
    )
    api_max_waits: int = Field(200, ge=1, description="requests waiting for a job at once, all users")
    api_max_streams_per_user: int = Field(4, ge=1, description="a user's open event streams")
    api_max_streams: int = Field(200, ge=1, description="open event streams, all users")
    api_max_listeners: int = Field(
        400,
        ge=1,
        description="Firestore listeners open at once (one per followed job, shared by its followers)",
    )
    api_busy_retry_seconds: int = Field(5, ge=1, le=3600, description="Retry-After past a cap")
    # Connections (api/connections.py): time and room a caller may hold before sending a request.
    api_head_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="a request's head (line and headers) must arrive within this of the connection's "
        "start or of the previous response; past it the connection is closed (idle ones too)",
    )
    api_body_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="a request's body must arrive within this of its head; past it 408 "
        "request_timeout and the connection is closed (keep it below the API service's request timeout)",
    )
    api_max_connections: int = Field(
        500,
        ge=1,
        description="open connections (or requests in flight) per API process; a request past it is "
        "answered 503 overloaded with Retry-After and its connection closed",
    )
    api_stream_recheck_seconds: float = Field(
        60.0, gt=0, description="how often an open event stream checks its token again (expiry, revocation)"
    )
    # The OpenAI-compatible speech route (api/openai_speech.py).
    openai_voices: dict[str, str] = Field(
        default_factory=dict,
        description='OpenAI voice name -> tts voice, e.g. OPENAI_VOICES=\'{"alloy": "joe"}\'; '
        "an OpenAI voice not named here speaks with the tts pipeline's default voice",
    )
    openai_speech_timeout_seconds: float = Field(
        240.0,
        gt=0,
        le=3600,
        description="how long POST /v1/audio/speech waits for its job before answering 504 "
        "(keep it below the API service's request timeout)",
    )

    # Completion notifications: the end event of every job, to the owner's webhooks and devices.
    notify_targets_collection: str = Field(
        "notify_targets", description="Firestore collection of each user's webhook endpoints and devices"
    )
    notify_backoff_seconds: list[float] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0],
        min_length=0,
        max_length=20,
        description="waits after each failed delivery, as JSON; attempts = its length + 1, then the dead letter",
    )
    notify_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=60,
        description="one delivery attempt's whole time, in total: connect, TLS, send and the answer's head "
        "(its body is not read); past it the attempt fails as a timeout",
    )
    notify_run_seconds: float = Field(
        40.0,
        gt=0,
        le=540,
        description="how long one dispatcher tick keeps delivering what falls due (below the function's timeout)",
    )
    notify_deadline_seconds: float = Field(
        45.0,
        gt=0,
        le=540,
        description="a dispatcher tick starts no delivery attempt this long after it began, leaving the rest "
        "due for the next tick: with one attempt's NOTIFY_TIMEOUT_SECONDS it ends before the function's "
        "timeout (60 s) and the next tick (every minute)",
    )
    notify_batch: int = Field(50, ge=1, le=500, description="owed jobs a dispatcher scan reads at once")
    notify_parallel: int = Field(
        8,
        ge=1,
        le=64,
        description="owners whose deliveries one scan makes side by side (each owner's one after another): "
        "a quarter of them (at least 1) for owners with retries due or a timeout lately, the rest for the others",
    )
    notify_max_endpoints: int = Field(5, ge=0, le=20, description="webhook endpoints per user")
    notify_max_devices: int = Field(10, ge=0, le=50, description="push device tokens per user")
    notify_secret_grace_seconds: int = Field(
        86400, ge=0, description="after a rotation, the old secret also signs for this long"
    )
    notify_allow_loopback: bool = Field(
        False, description="local stack only: webhooks to http://127.0.0.1 (never in production)"
    )
    fcm_url: str | None = Field(
        None, description="local stack only: an FCM v1 send URL to use instead of fcm.googleapis.com"
    )

    # The sweeper: what counts as stuck.
    stale_pending_seconds: float = Field(60.0, gt=0, description="pending this long: re-validate")
    stale_queued_seconds: float = Field(300.0, gt=0, description="queued this long unclaimed: re-publish")

    # Logging.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="the root logger's level"
    )
    profile_dir: Path | None = Field(
        None,
        description="benchmarks only: each process samples its own CPU by function and writes the "
        "profile here (infra/sampling.py)",
    )

    @field_validator("enabled_pipelines", "plugins", "api_cors_origins", "reuse_pipelines", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("openai_voices")
    @classmethod
    def _openai_voices(cls, value: dict[str, str]) -> dict[str, str]:
        for name, voice in value.items():
            if name not in OPENAI_VOICE_NAMES:
                raise ValueError(
                    f"OPENAI_VOICES: {name[:40]!r} is not an OpenAI voice; use {', '.join(sorted(OPENAI_VOICE_NAMES))}"
                )
            if not VOICE_NAME.fullmatch(voice):
                raise ValueError(
                    f"OPENAI_VOICES: {name} -> {voice[:40]!r} is not a voice name "
                    "(1-100 letters, digits, '.', '_' or '-')"
                )
        return value

    @model_validator(mode="after")
    def _model_fits_the_slots(self) -> Settings:
        if self.model_concurrency is not None and self.model_concurrency > self.max_concurrent_jobs:
            raise ValueError(
                f"MODEL_CONCURRENCY {self.model_concurrency} is larger than MAX_CONCURRENT_JOBS "
                f"{self.max_concurrent_jobs}: at most MAX_CONCURRENT_JOBS units are ever running"
            )
        return self

    @model_validator(mode="after")
    def _batches_fit_the_slots(self) -> Settings:
        # Admission lets MAX_CONCURRENT_JOBS units in at once (the pull consumers' flow control
        # too): a batch larger than that could never form.
        for name, batching in self.batching.items():
            if batching.max_batch > self.max_concurrent_jobs:
                raise ValueError(
                    f"BATCHING for {name}: max_batch {batching.max_batch} is larger than "
                    f"MAX_CONCURRENT_JOBS {self.max_concurrent_jobs}; raise MAX_CONCURRENT_JOBS"
                )
        return self

    @model_validator(mode="after")
    def _notify_deadline_covers_the_run(self) -> Settings:
        if self.notify_deadline_seconds < self.notify_run_seconds:
            raise ValueError(
                f"NOTIFY_DEADLINE_SECONDS ({self.notify_deadline_seconds:g}) is below NOTIFY_RUN_SECONDS "
                f"({self.notify_run_seconds:g}): a tick would scan with no time left to deliver"
            )
        return self

    @model_validator(mode="after")
    def _loopback_only_locally(self) -> Settings:
        if self.environment == "production" and (self.notify_allow_loopback or self.fcm_url):
            raise ValueError(
                "NOTIFY_ALLOW_LOOPBACK and FCM_URL are for the local stack only (ENVIRONMENT=local)"
            )
        return self

    def max_run_seconds_for(self, pipeline: str) -> float:
        """The longest an attempt of ``pipeline`` may run."""
        return self.pipeline_max_run_seconds.get(pipeline, self.max_run_seconds)

    @property
    def using_emulators(self) -> bool:
        return bool(self.firestore_emulator_host or self.pubsub_emulator_host)

    @property
    def api_revocation_checked(self) -> bool:
        """Whether the API checks tokens for revocation: API_CHECK_REVOKED, else on in production."""
        if self.api_check_revoked is None:
            return self.environment == "production"
        return self.api_check_revoked

    @property
    def push_auth_enabled(self) -> bool:
        """Whether the GPU service verifies push tokens (the emulator's pushes carry none)."""
        if self.push_auth == "auto":
            return not self.using_emulators
        return self.push_auth == "oidc"
