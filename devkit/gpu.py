"""Helpers for the GPU-marked tests that run real weights from a local directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

L4_BUDGET_BYTES = 22 * 10**9  # what a 24 GB L4 has free after the CUDA context


def local_model(variable: str) -> Path:
    """The path in environment variable ``variable``; the test is skipped, saying why, when it is
    unset or names nothing (weights are never downloaded)."""
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"set {variable} to a local model path to run this test")
    path = Path(value)
    if not path.exists():
        pytest.skip(f"{variable}={value} does not exist")
    return path
