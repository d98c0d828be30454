"""The API's token checks that need no Auth emulator: App Check tokens (verified by firebase-admin
against keys served from 127.0.0.1) and when revocation is checked."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from api.auth import TokenVerifier
from api.errors import ApiError
from devkit.app_check import APP_ID, AppCheckKeys, serve_app_check_keys
from infra.settings import Settings

pytestmark = pytest.mark.usefixtures("no_settings_env")

PROJECT = "demo-gpu-jobs"


@pytest.fixture(scope="module")
def keys() -> Iterator[AppCheckKeys]:
    with serve_app_check_keys(PROJECT) as served:
        yield served


@pytest.fixture
def verifier(keys: AppCheckKeys) -> Iterator[TokenVerifier]:
    settings = Settings(
        google_cloud_project=PROJECT,
        firebase_auth_emulator_host="127.0.0.1:1",  # no credential needed; nothing is asked of Auth here
        environment="local",
        api_app_check=True,
        app_check_jwks_url=keys.url,
    )
    verifier = TokenVerifier(settings)
    yield verifier
    verifier.close()


def test_a_good_app_check_token_names_its_app(verifier: TokenVerifier, keys: AppCheckKeys) -> None:
    assert verifier.verify_app_check(keys.token())["app_id"] == APP_ID


def test_app_check_keys_are_fetched_once_not_per_call(verifier: TokenVerifier, keys: AppCheckKeys) -> None:
    before = len(keys.fetches)
    for _ in range(5):
        verifier.verify_app_check(keys.token())
    assert len(keys.fetches) - before <= 1


@pytest.mark.parametrize(("header"), [None, "", "   "], ids=["none", "empty", "blank"])
def test_a_missing_app_check_token_is_a_401_naming_the_header(
    verifier: TokenVerifier, header: str | None
) -> None:
    with pytest.raises(ApiError) as refused:
        verifier.verify_app_check(header)
    assert (refused.value.code, refused.value.status) == ("app_check_required", 401)
    assert "X-Firebase-AppCheck" in refused.value.message


def _other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    "make",
    [
        lambda k: k.token(key=_other_key()),
        lambda k: k.token(aud=["projects/123", "projects/another-project"]),
        lambda k: k.token(iss="https://securetoken.google.com/demo-gpu-jobs"),
        lambda k: k.token(exp=1_000_000_000, iat=999_999_000),
        lambda k: k.token(kid="not-a-published-key"),
        lambda k: "not-a-jwt",
    ],
    ids=["other-key", "other-project", "wrong-issuer", "expired", "unknown-key", "not-a-jwt"],
)
def test_a_bad_app_check_token_is_a_401(verifier: TokenVerifier, keys: AppCheckKeys, make: Any) -> None:
    token = make(keys)
    with pytest.raises(ApiError) as refused:
        verifier.verify_app_check(token)
    assert (refused.value.code, refused.value.status) == ("invalid_app_check", 401)
    assert token not in refused.value.message


# -- revocation, by default in production ----------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "checked"),
    [
        ({"environment": "production"}, True),
        ({"environment": "local"}, False),
        ({"environment": "production", "api_check_revoked": False}, False),
        ({"environment": "local", "api_check_revoked": True}, True),
    ],
    ids=["production", "local", "production-off", "local-on"],
)
def test_revocation_is_checked_by_default_in_production(values: dict[str, Any], checked: bool) -> None:
    assert Settings(**values).api_revocation_checked is checked


def test_revocation_defaults_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_CHECK_REVOKED", raising=False)
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("API_REVOCATION_CACHE_SECONDS", "5")
    settings = Settings()
    assert settings.api_revocation_checked and settings.api_revocation_cache_seconds == 5
