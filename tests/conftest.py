"""Session-wide fixtures. The emulator stack fixture lives in tests/integration/conftest.py."""

from __future__ import annotations

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        # The marker itself: keywords also hold every parent's name, so a checkout in a folder
        # called "gpu" (or a test id containing it) would skip everything.
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
