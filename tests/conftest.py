"""Session-wide fixtures. The emulator stack fixture lives in tests/integration/conftest.py."""

from __future__ import annotations

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


#: Fixtures that load a real model (tiny, but on the CPU): a test that uses one is slow, and runs
#: in ``make test``, not in ``make test-fast``.
MODEL_FIXTURES = frozenset({"one_torch_thread", "tiny_en"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
