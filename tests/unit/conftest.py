"""Fixtures shared by unit-test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module's tiny diffusion models on one torch thread (steadier on a busy 2-core box)."""
    from devkit.tiny_diffusers import single_threaded_torch

    with single_threaded_torch():
        yield
