"""The Storage client's HTTP session reads the environment once, and still honours what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.blobs import storage_client
from infra.settings import Settings

BUNDLE = "/etc/ssl/certs/a-private-ca.pem"


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_settings_env: None) -> None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for scheme in ("http", "https", "all"):
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc


def _session(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    return storage_client(Settings(storage_emulator_host="http://127.0.0.1:9"))._http


def test_a_ca_bundle_named_in_the_environment_is_still_the_one_verified_against(
    bare_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", BUNDLE)
    session = _session(monkeypatch)
    assert session.verify == BUNDLE  # type: ignore[attr-defined]
    assert session.trust_env is False  # type: ignore[attr-defined]  # read once, here


def test_a_proxy_in_the_environment_is_still_honoured(
    bare_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    session = _session(monkeypatch)
    assert session.trust_env is True  # type: ignore[attr-defined]  # requests applies it per request


def test_a_netrc_file_is_still_honoured(
    bare_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".netrc").write_text("machine example.com login a password b\n")
    session = _session(monkeypatch)
    assert session.trust_env is True  # type: ignore[attr-defined]
