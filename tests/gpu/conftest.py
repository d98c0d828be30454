"""What every GPU test shares: the CUDA cache is emptied after each, so one test's leftovers do not
count against the next one's memory budget."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _free_gpu_memory() -> Iterator[None]:
    yield
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
