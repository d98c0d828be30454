"""Fixtures shared by unit-test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module's tiny diffusion models on one torch thread (steadier on a busy 2-core box)."""
    from devkit.tiny_diffusers import single_threaded_torch

    with single_threaded_torch():
        yield


@pytest.fixture
def no_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from their defaults and the test's own values only: the environment a session's
    local stack exported (integration tests run first in a whole-suite run) is taken away."""
    from infra.settings import Settings

    fields = set(Settings.model_fields)
    for name in list(os.environ):
        key = name.lower()
        if key in fields or key.split("__", 1)[0] in fields:
            monkeypatch.delenv(name)
