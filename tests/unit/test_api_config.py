"""The API's start-up checks and request bodies, without a stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.auth import UnsafeConfiguration, check_environment
from api.models import UploadCreate
from api.service import job_id_for
from core.contract import JOB_ID_PATTERN
from infra.settings import Settings

REPO = Path(__file__).resolve().parents[2]


# The integration stack's environment (ENVIRONMENT=local, NOTIFY_ALLOW_LOOPBACK, FCM_URL, ...)
# stays set for the rest of a whole-suite session: each test here builds its settings from its own
# values only.
pytestmark = pytest.mark.usefixtures("no_settings_env")


def test_production_refuses_the_auth_emulator() -> None:
    with pytest.raises(UnsafeConfiguration, match="FIREBASE_AUTH_EMULATOR_HOST"):
        check_environment(Settings(firebase_auth_emulator_host="127.0.0.1:9099", environment="production"))
    check_environment(Settings(firebase_auth_emulator_host="127.0.0.1:9099", environment="local"))


def test_production_refuses_a_signing_key_file(tmp_path: Path) -> None:
    with pytest.raises(UnsafeConfiguration, match="SIGNING_KEY_FILE"):
        check_environment(
            Settings(
                signing_key_file=tmp_path / "key.json",
                environment="production",
                firebase_auth_emulator_host=None,
            )
        )


def test_the_service_will_not_start_in_production_with_emulator_tokens() -> None:
    env = {"PATH": "/usr/bin:/bin", "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9", "PORT": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "api"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "refusing to start" in out.stderr and "unsigned" in out.stderr


def test_an_idempotency_key_names_one_job_per_user() -> None:
    a = job_id_for("alice", "order-17")
    assert a == job_id_for("alice", "order-17") and JOB_ID_PATTERN.match(a)
    assert a != job_id_for("bob", "order-17")
    assert job_id_for("alice", None) != job_id_for("alice", None)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "../x.wav", "contentType": "audio/wav", "size": 1},
        {"name": "x.wav", "contentType": "audio", "size": 1},
        {"name": "x.wav", "contentType": "audio/wav", "size": 0},
        {"name": "x.wav", "contentType": "audio/wav", "size": 1, "extra": True},
    ],
)
def test_upload_requests_that_make_no_sense_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        UploadCreate.model_validate(body)
