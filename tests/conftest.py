"""Session-wide fixtures. The emulator stack fixture lives in tests/integration/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.slow_modules import skip_module

TESTS = Path(__file__).resolve().parent


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


#: Fixtures that load a real model (tiny, but on the CPU: diffusion models, Whisper, speech made
#: with Piper) or run an outside scanner (checkov): a test that uses one is slow, and runs in
#: ``make test``, not in ``make test-fast``.
SLOW_FIXTURES = frozenset(
    {"one_torch_thread", "tiny_en", "piper_wav", "terraform_reports", "dockerfile_reports"}
)


def work_group(item: pytest.Item) -> str:
    """The unit of work a test goes to a worker with when the suite runs on several (``make test``:
    pytest-xdist, ``--dist loadgroup``): every integration test in one, so that one emulator stack
    serves them all; each other file in one, so that what it builds once per process (Terraform's
    initialised root, a module's fixtures) is built once."""
    if item.path.resolve().is_relative_to(TESTS / "integration"):
        return "integration"
    return item.path.name


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """A module slow as a whole is not imported by a run whose ``-m`` leaves out slow tests."""
    if skip_module(collection_path, config.option.markexpr or "", SLOW_FIXTURES):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        item.add_marker(pytest.mark.xdist_group(work_group(item)))
    # torch (seconds to import) only when a collected test needs a GPU
    if not any(item.get_closest_marker("gpu") is not None for item in items) or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        # The marker itself: keywords also hold every parent's name, so a checkout in a folder
        # called "gpu" (or a test id containing it) would skip everything.
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
