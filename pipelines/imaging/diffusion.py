"""Torch/diffusers helpers shared by the diffusion pipelines (inpaint's Flux backend, edit)."""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch

from core.errors import OutOfGpuMemory, PermanentError
from core.spec import ProgressFn
from pipelines.imaging.fields import DtypeName
from pipelines.imaging.memory import (
    DEFAULT_HEADROOM,
    MEMORY_SHORT,
    MemoryStrategy,
    StrategyChoice,
    batch_headroom,
    choose_memory_strategy,
    current_lease,
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


def component_bytes(
    pipe: Any, *, skip: tuple[str, ...] = (), keep: tuple[str, ...] | None = None
) -> dict[str, int]:
    """Bytes per torch component of a diffusers pipeline, leaving out ``skip`` (only ``keep``, if given)."""
    return {
        name: module_bytes(component)
        for name, component in pipe.components.items()
        if isinstance(component, torch.nn.Module) and name not in skip and (keep is None or name in keep)
    }


def dequantized_bytes(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Bytes of a GGUF-quantized model once its weights are dequantized to ``dtype``."""
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        shape = getattr(tensor, "quant_shape", None)
        if shape is not None:
            total += math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        else:
            total += tensor.numel() * tensor.element_size()
    return total


def dequantize_fits(config: Any, device: str, sizes: dict[str, int], transformer: Any) -> bool:
    """Whether to dequantize a GGUF transformer once at load: on CUDA, when the memory this
    pipeline may use holds the dequantized weights with everything else on the GPU path and the
    headroom (an H100: 23.8 GB of bf16 FLUX.1 Fill). Without the optional CUDA kernels (a hub
    download) diffusers dequantizes every GGUF layer on every forward, so this saves that work on
    every step; on an L4 it does not fit and the quantized weights stay."""
    if getattr(config, "gguf_dequantize", "auto") != "auto" or not device.startswith("cuda"):
        return False
    if config.memory_strategy not in ("auto", "gpu"):
        return False
    share = memory_share(device)
    if share is None:
        return False
    lease = current_lease()
    headroom = batch_headroom(DEFAULT_HEADROOM, lease.max_batch if lease else 1)
    compute = getattr(getattr(transformer, "config", None), "_compute_dtype", None) or torch.bfloat16
    dtype = compute if isinstance(compute, torch.dtype) else torch.bfloat16
    others = sum(sizes.values()) - sizes.get("transformer", 0)
    return share >= others + dequantized_bytes(transformer, dtype) + headroom


def stream_to(device: str, modules: list[Any]) -> None:
    """Keep ``modules`` in host memory and run them on ``device`` one submodule at a time
    (accelerate's ``cpu_offload``): only the block being computed is on the GPU. For unquantized
    text encoders only (a quantized model loses its quantization type this way)."""
    from accelerate import cpu_offload

    for module in modules:
        if module is None:
            continue
        if is_quantized(module):
            raise PermanentError(
                f"cannot stream the quantized {type(module).__name__} layer by layer", code=MEMORY_SHORT
            )
        cpu_offload(module, execution_device=torch.device(device), offload_buffers=True)


def free_bytes(device: str) -> int | None:
    """Free memory on a CUDA device right now, or ``None`` for other devices."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def is_quantized(module: Any) -> bool:
    """Whether a model (or any torch component of a pipeline) holds quantized weights (GGUF)."""
    components = getattr(module, "components", None)
    if isinstance(components, dict):
        return any(is_quantized(c) for c in components.values())
    return bool(getattr(module, "is_quantized", False))


def _accounted(strategy: MemoryStrategy, sizes: dict[str, int], headroom: int) -> MemoryStrategy:
    """A forced strategy with the bytes the budget must count for it."""
    total, largest = sum(sizes.values()), max(sizes.values(), default=0)
    resident, need = {
        "gpu": (total, headroom),
        "model_offload": (0, largest + headroom),
        "sequential_offload": (0, headroom),
        "cpu": (0, 0),
    }[strategy.placement]
    return replace(strategy, resident_bytes=resident, headroom_bytes=need)


def plan_memory(
    choice: StrategyChoice,
    device: str,
    sizes: dict[str, int],
    *,
    what: str,
    headroom_bytes: int = DEFAULT_HEADROOM,
    quantized: bool = False,
    sequential: bool = False,
) -> MemoryStrategy:
    """Forced strategy from config, or the automatic choice for these component sizes; logged.

    Inside the model pool the plan is made against this pipeline's share of the process's GPU
    budget (:func:`~pipelines.imaging.memory.current_lease`) and for its batch size, and what it
    takes is recorded there; outside it (a script, a test) against what is free on the device.

    Raises:
        PermanentError: ``gpu_memory_short`` with the numbers, when the model cannot be placed.
    """
    lease = current_lease()
    max_batch = lease.max_batch if lease is not None else 1
    headroom = batch_headroom(headroom_bytes, max_batch)
    strategy = forced_strategy(choice, device, quantized=quantized, max_batch=max_batch, what=what)
    if strategy is not None:
        strategy = _accounted(strategy, sizes, headroom)
    else:
        strategy = choose_memory_strategy(
            device,
            memory_share(device),
            sum(sizes.values()),
            largest_component_bytes=max(sizes.values(), default=0),
            headroom_bytes=headroom_bytes,
            quantized=quantized,
            sequential=sequential,
            max_batch=max_batch,
            what=what,
        )
    if lease is not None:
        lease.take(strategy)
    log.info("%s: memory strategy %s (%s)", what, strategy.name, strategy.reason)
    return strategy


def memory_share(device: str) -> int | None:
    """What a loading pipeline may use: its share of the pool's budget (never more than is free
    on the device), or what is free when it loads outside the pool; ``None`` off CUDA."""
    free = free_bytes(device)
    lease = current_lease()
    if lease is None or not device.startswith("cuda"):
        return free
    share = lease.share()
    return share if free is None else min(share, free)


def apply_memory_strategy(
    pipe: Any, strategy: MemoryStrategy, device: str, *, stream: tuple[str, ...] = ()
) -> None:
    """Place a diffusers pipeline's weights as ``strategy`` says and turn on its memory savers.

    ``stream`` names components (text encoders) kept in host memory and run on the GPU one block at
    a time (:func:`stream_to`), the others placed as ``strategy`` says.

    Raises:
        PermanentError: ``gpu_memory_short``, sequential offload asked for a pipeline with quantized
            weights (accelerate would re-create them without their quantization type, and the first
            step would fail with ``KeyError: None``, diffusers#14691).
    """
    if stream and strategy.placement == "gpu":
        for name, component in pipe.components.items():
            if isinstance(component, torch.nn.Module) and name not in stream:
                component.to(device)
        stream_to(device, [pipe.components[name] for name in stream])
    elif strategy.placement in ("cpu", "gpu"):
        pipe.to(device)
    elif strategy.placement == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    else:
        if is_quantized(pipe):
            raise PermanentError(
                "sequential offload cannot run a quantized (GGUF) transformer: offloaded weights lose "
                "their quantization type (diffusers#14691); use model_offload or gpu",
                code=MEMORY_SHORT,
            )
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
