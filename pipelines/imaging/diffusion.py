"""Torch/diffusers helpers shared by the diffusion pipelines (inpaint's Flux backend, edit)."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from core.errors import OutOfGpuMemory
from core.spec import ProgressFn
from pipelines.imaging.fields import DtypeName
from pipelines.imaging.memory import (
    DEFAULT_HEADROOM,
    MemoryStrategy,
    StrategyChoice,
    choose_memory_strategy,
    forced_strategy,
)

log = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    """``"auto"`` becomes ``"cuda"`` when CUDA is available, else ``"cpu"``; other names pass through."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def torch_dtype(name: DtypeName, device: str) -> torch.dtype:
    """The compute dtype; half precision only on CUDA (CPU kernels for it are slow or missing)."""
    if not device.startswith("cuda"):
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers as stored (quantized GGUF weights count as stored)."""
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        total += tensor.numel() * tensor.element_size()
    return total


def component_bytes(pipe: Any, *, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """Bytes per torch component of a diffusers pipeline, leaving out ``skip``."""
    return {
        name: module_bytes(component)
        for name, component in pipe.components.items()
        if isinstance(component, torch.nn.Module) and name not in skip
    }


def free_bytes(device: str) -> int | None:
    """Free memory on a CUDA device right now, or ``None`` for other devices."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def plan_memory(
    choice: StrategyChoice,
    device: str,
    sizes: dict[str, int],
    *,
    what: str,
    headroom_bytes: int = DEFAULT_HEADROOM,
) -> MemoryStrategy:
    """Forced strategy from config, or the automatic choice for these component sizes; logged."""
    strategy = forced_strategy(choice, device)
    if strategy is None:
        strategy = choose_memory_strategy(
            device,
            free_bytes(device),
            sum(sizes.values()),
            largest_component_bytes=max(sizes.values(), default=0),
            headroom_bytes=headroom_bytes,
        )
    log.info("%s: memory strategy %s (%s)", what, strategy.name, strategy.reason)
    return strategy


def apply_memory_strategy(pipe: Any, strategy: MemoryStrategy, device: str) -> None:
    """Place a diffusers pipeline's weights as ``strategy`` says and turn on its memory savers."""
    if strategy.placement in ("cpu", "gpu"):
        pipe.to(device)
    elif strategy.placement == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    vae: Any = getattr(pipe, "vae", None)
    if strategy.vae_slicing and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
    if strategy.vae_tiling and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
    # A no-op for transformers whose attention processors cannot slice (Flux); UNets honour it.
    if strategy.attention_slicing and hasattr(pipe, "enable_attention_slicing"):
        pipe.enable_attention_slicing()


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator: diffusers draws the noise on it, so a seed gives the same noise on any device."""
    return torch.Generator(device="cpu").manual_seed(seed)


def step_progress(progress: ProgressFn, requested_steps: int) -> Callable[..., dict[str, Any]]:
    """A ``callback_on_step_end`` reporting ``step/steps`` as ``"denoising"`` progress.

    The step count is read from the pipeline (``strength`` < 1 runs fewer steps than requested).
    ``progress`` may raise :class:`~core.errors.Cancelled`; it propagates out of the
    pipeline call and ends the run.
    """

    def callback(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        total = getattr(pipe, "_num_timesteps", None) or requested_steps
        progress(min(1.0, (step + 1) / total), "denoising")
        return callback_kwargs

    return callback


class PeakGpuMemory:
    """Context manager measuring ``torch.cuda.max_memory_allocated`` over a block (``None`` off CUDA)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_bytes: int | None = None
        self._cuda = device.startswith("cuda") and torch.cuda.is_available()

    def __enter__(self) -> PeakGpuMemory:
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(torch.device(self.device))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cuda:
            self.peak_bytes = int(torch.cuda.max_memory_allocated(torch.device(self.device)))


@contextmanager
def gpu_errors() -> Iterator[None]:
    """Turn CUDA out-of-memory into :class:`OutOfGpuMemory` (retryable: another instance may fit it)."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfGpuMemory(f"the GPU ran out of memory: {e}") from e
