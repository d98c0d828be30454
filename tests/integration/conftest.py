"""The local stack, started once per test session, and helpers to talk to it.

A test file declares the pipelines its jobs run on, ``pytestmark = pytest.mark.pipelines("tts")``;
the session's stack runs the union over the tests collected, and builds a tiny model (edit, t2v)
only when its pipeline is among them. Running one file starts only what that file needs.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.flaky import topology_with_flaky
from functions.handlers import Deps
from infra.blobs import BlobStore, storage_client
from infra.bus import Bus
from infra.client import Client
from infra.jobs import JobStore, firestore_client
from infra.localstack.stack import LocalStack, StackConfig, free_port
from infra.settings import Settings
from pipelines.registry import catalog

QUOTA_PIPELINE = "flakyslow"
#: where the FCM v1 stand-in (devkit/receivers.py) listens for the stack's dispatcher
FCM_PORT = free_port()

# The tts pipeline's voices on the test stack: the bundled Piper model without sampling noise (the
# same text always gives the same audio, so transcripts cannot flake), and that voice recorded
# very quiet and at full level, to show that loudness normalisation levels both.
TTS_TEST_VOICES = {
    "joe": {"noise_scale": 0.0, "noise_w_scale": 0.0},
    "joe-calm": {"length_scale": 1.12, "noise_scale": 0.0, "noise_w_scale": 0.0},
    "quiet": {"noise_scale": 0.0, "noise_w_scale": 0.0, "volume": 0.03},
    "loud": {"noise_scale": 0.0, "noise_w_scale": 0.0, "volume": 1.0},
}
QUOTA_CAP = 3
#: the pipeline whose daily cap anonymous accounts have lower than everyone else on the test stack
TIER_PIPELINE = "automaton"
TIER_ANONYMOUS_DAILY = 1

# Small enough to test "too large" with a real upload; lease short enough to test take-overs.
TEST_STACK_ENV = {
    "MAX_INPUT_BYTES": str(3 * 2**20),
    "MAX_CONCURRENT_JOBS": "2",
    "LEASE_SECONDS": "6",
    "PROGRESS_MIN_INTERVAL_SECONDS": "0.3",
    # The redriver, not the sweeper, re-drives queued work here: the sweeper's re-publish is the
    # backstop for when no instance is running at all.
    "STALE_QUEUED_SECONDS": "30",
    "REDRIVE_AFTER_SECONDS": "1",
    "REDRIVE_POLL_SECONDS": "0.5",
    "STALE_PENDING_SECONDS": "4",
    "PLUGINS": "devkit.flaky:SPEC,devkit.flaky:SLOW_SPEC,devkit.flaky:PARTS_SPEC",
    # Generous per user, so that no other test meets a quota; flakyslow is the quota tests' own.
    # Anonymous accounts (most API tests sign in anonymously) get the same caps, but may start only
    # TIER_ANONYMOUS_DAILY automaton jobs a day: the tier tests' own cap.
    "QUOTAS": json.dumps(
        {
            "max_unfinished": 50,
            "max_daily": None,
            "pipelines": {QUOTA_PIPELINE: {"max_unfinished": QUOTA_CAP}},
            "tiers": {
                "anonymous": {
                    "max_unfinished": 50,
                    "max_daily": None,
                    "pipelines": {
                        QUOTA_PIPELINE: {"max_unfinished": QUOTA_CAP},
                        TIER_PIPELINE: {"max_daily": TIER_ANONYMOUS_DAILY},
                    },
                }
            },
        }
    ),
    "LOG_LEVEL": "INFO",
    # OpenAI's voice names on the speech route (api/openai_speech.py) -> the tts pipeline's voices.
    "OPENAI_VOICES": json.dumps({"alloy": "joe", "nova": "joe-calm"}),
    # Notifications: short backoff (5 attempts in all) and timeout, and the FCM v1 stand-in that
    # tests/integration/test_notifications.py serves on FCM_PORT.
    "NOTIFY_BACKOFF_SECONDS": "[1, 1, 1, 1]",
    "NOTIFY_TIMEOUT_SECONDS": "2",
    "FCM_URL": f"http://127.0.0.1:{FCM_PORT}/v1/projects/{{project}}/messages:send",
}


@pytest.fixture(scope="session")
def flaky_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flaky")


#: Every pipeline the test stack can run: the built-in ones, the test stand-ins
#: (devkit/flaky.py) and automaton, the example plugin, found through its installed
#: distribution's entry point (not PLUGINS); the stack gives it the route its spec declares.
ALL_PIPELINES = (
    "transcribe",
    "inpaint",
    "edit",
    "video",
    "t2v",
    "tts",
    "flaky",
    "flakyslow",
    "flakyparts",
    "automaton",
)


def pipelines_needed(items: list[pytest.Item]) -> list[str]:
    """The pipelines a session's stack runs: the union of the ``pipelines`` markers of the collected
    tests that use the stack, all of them for a test that declares none. A job on a pipeline its
    test did not declare fails with ``pipeline_unavailable`` ("not enabled in this
    deployment"), so a missing declaration shows at once."""
    needed: set[str] = set()
    for item in items:
        if "stack" not in getattr(item, "fixturenames", ()):
            continue
        marks = list(item.iter_markers("pipelines"))
        if not marks:
            return list(ALL_PIPELINES)
        for mark in marks:
            unknown = set(mark.args) - set(ALL_PIPELINES)
            if unknown:
                raise pytest.UsageError(
                    f"{item.nodeid}: no pipeline named {sorted(unknown)} on the test stack"
                )
            needed.update(mark.args)
    # The GPU service serves at least one pipeline; flaky is the cheapest (no model).
    return [name for name in ALL_PIPELINES if name in needed] or ["flaky"]


@pytest.fixture(scope="session")
def enabled_pipelines(request: pytest.FixtureRequest) -> list[str]:
    return pipelines_needed(request.session.items)


def tiny_edit_model(root: Path) -> dict[str, str]:
    """A tiny random-weight InstructPix2Pix saved locally: the edit pipeline's plumbing, end to end."""
    from devkit.tiny_diffusers import build_tiny_instruct_pix2pix

    model = build_tiny_instruct_pix2pix(root / "tiny-ip2p")
    return {
        "PIPELINES__EDIT__MODEL_DIR": str(model),
        "PIPELINES__EDIT__DTYPE": "float32",
        "PIPELINES__EDIT__DEVICE": "cpu",
    }


#: The adapter the local stack's t2v merges into its tiny Wan (fused mode), relative to its LORA_DIR.
T2V_FUSED_LORA = {"path": "wan/a/pytorch_lora_weights.safetensors", "weight": 0.7}


def tiny_wan_model(root: Path) -> dict[str, str]:
    """A tiny random-weight Wan text-to-video model and an adapter directory, saved locally."""
    from devkit.tiny_diffusers import build_tiny_wan, write_tiny_lora

    model = build_tiny_wan(root / "tiny-wan")
    write_tiny_lora(model, root / "loras" / "wan" / "a", kind="wan", seed=1)
    write_tiny_lora(model, root / "loras" / "wan" / "b", kind="wan", seed=2)
    return {
        "PIPELINES__T2V__MODEL_DIR": str(model),
        "PIPELINES__T2V__DTYPE": "float32",
        "PIPELINES__T2V__DEVICE": "cpu",
        "PIPELINES__T2V__LORA_DIR": str(root / "loras"),
        "PIPELINES__T2V__LORA_MODE": "fused",
        "PIPELINES__T2V__FUSED_LORAS": json.dumps([T2V_FUSED_LORA]),
    }


#: The pipelines that run on a tiny model built for the session: built only when one is enabled.
TINY_MODELS = {"edit": tiny_edit_model, "t2v": tiny_wan_model}


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, flaky_state: Path, enabled_pipelines: list[str]
) -> Iterator[LocalStack]:
    state = tmp_path_factory.mktemp("stack")
    env = {
        **TEST_STACK_ENV,
        "PIPELINES__FLAKY__STATE_DIR": str(flaky_state),
        "PIPELINES__FLAKYPARTS__STATE_DIR": str(flaky_state),
        "PIPELINES__FLAKYSLOW__STATE_DIR": str(flaky_state),
        "PIPELINES__TTS__VOICES": json.dumps(TTS_TEST_VOICES),
    }
    models = tmp_path_factory.mktemp("models")
    for name, build in TINY_MODELS.items():
        if name in enabled_pipelines:
            env.update(build(models))
    config = StackConfig(
        state_dir=state, env=env, enabled_pipelines=enabled_pipelines, schedule_interval_seconds=1.0
    )
    with LocalStack(config, topology_with_flaky()) as running, pytest.MonkeyPatch.context() as mp:
        for key, value in {**running.env, **env}.items():
            mp.setenv(key, value)
        yield running
    # Logs stay in the session's tmp dir for post-mortems: print where.
    print(f"\nlocal stack logs: {config.log_dir}")
    print(f"local stack: {', '.join(enabled_pipelines)}; ready in {running.timings.get('total')}s")


@pytest.fixture(scope="session")
def settings(stack: LocalStack) -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def client(settings: Settings) -> Client:
    return Client.from_settings(settings)


@pytest.fixture
def uid() -> str:
    """A fresh user per test, so tests never see each other's jobs."""
    return f"user-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


os.environ.setdefault("HF_HUB_OFFLINE", "1")


def untriggered_deps(collection: str) -> Deps:
    """The functions' dependencies on a jobs collection no trigger watches: what the sweeper sees
    when a created-event was lost, or a document slipped past the functions."""
    settings = Settings(jobs_collection=collection)
    return Deps(
        settings,
        catalog(["flaky"], ["devkit.flaky:SPEC"]),
        JobStore(firestore_client(settings), collection),
        BlobStore(storage_client(settings)),
        Bus(settings),
    )
