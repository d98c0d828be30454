"""Choosing where a diffusion pipeline's weights live, from the device and its free memory.

Pure logic (no torch import), so the choice is testable for any device size. The loaders measure
``model_bytes`` (the weights that would sit on the GPU) and ``largest_component_bytes`` (the
biggest single component, e.g. the transformer), read the free memory with
``torch.cuda.mem_get_info``, and apply the result with
:func:`pipelines.imaging.diffusion.apply_memory_strategy`.

Ladder, cheapest first (each rung trades speed for memory):

``gpu``
    Everything on the GPU: fastest. Needs ``model_bytes + headroom`` free. When that only just
    fits (less than two headrooms to spare) VAE slicing and tiling are switched on as cheap insurance
    against the VAE decode spike at large sizes.
``model_offload``
    ``enable_model_cpu_offload``: whole components move to the GPU when called and back after, so
    only the largest must fit (plus headroom). Costs a host-to-device copy of each component per
    job (about 1 s for 12 GB over PCIe 4).
``sequential_offload``
    ``enable_sequential_cpu_offload``: weights stream in layer by layer; works with a few GB but is
    many times slower. Attention slicing is added when even the headroom is short.
``cpu``
    No accelerator: everything in host memory.

``headroom`` (3 GiB by default) covers activations and the VAE decode at about one megapixel, the
CUDA context and allocator slack. A pipeline that runs batches of ``max_batch`` images keeps VAE
slicing on (the decode then runs one image at a time, so its spike does not grow with the batch) and
adds ``per_image_bytes`` of headroom for each image past the first (latents and attention
activations, which do grow with the batch).

Two rungs are never taken for some models:

- a quantized (GGUF) denoiser never gets ``sequential_offload``: accelerate re-creates offloaded
  weights as plain tensors without the quantization type, and the first forward fails with
  ``KeyError: None`` (diffusers ``quantizers/gguf/utils.py``, open upstream as diffusers#14691).
  Model offload moves whole modules and keeps the type, so it is the last rung for them;
- with ``sequential=False`` (the image pipelines) the automatic choice stops at model offload too:
  streaming a 12-41 GB denoiser through PCIe twice per step is minutes per image, so a model that
  does not fit is refused at start with the numbers. An operator who accepts that speed forces
  ``memory_strategy: sequential_offload``.

When a refusal is due, a :class:`~core.errors.PermanentError` with code ``gpu_memory_short`` is
raised with the sizes, so the pool reports the pipeline as failed with those numbers and its jobs end with
``pipeline_unavailable``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from core.errors import PermanentError

Placement = Literal["cpu", "gpu", "model_offload", "sequential_offload"]
StrategyChoice = Literal["auto", "cpu", "gpu", "model_offload", "sequential_offload"]

GiB = 2**30
DEFAULT_HEADROOM = 3 * GiB
# Without a measured largest component, assume the denoiser holds about three quarters of the weights
# (FLUX.1 Fill Q8 + bf16 T5: 12.7 of 22.6 GB; Qwen-Image-Edit bf16: 41 of 58 GB).
LARGEST_COMPONENT_SHARE = 0.75
#: Headroom per image past the first in a batched call, with VAE slicing on: packed latents, text
#: embeddings and attention activations of a 1 MP image in a 12-20 B transformer.
DEFAULT_PER_IMAGE = 1 * GiB
#: The code of the :class:`~core.errors.PermanentError` raised when a model cannot be placed.
MEMORY_SHORT = "gpu_memory_short"


@dataclass(frozen=True)
class MemoryStrategy:
    """Where weights live and which memory savers are on; ``reason`` says why (it is logged)."""

    placement: Placement
    vae_slicing: bool = False
    vae_tiling: bool = False
    attention_slicing: bool = False
    reason: str = ""
    #: weights kept on the GPU between jobs, and the headroom planned for a call (for the budget)
    resident_bytes: int = 0
    headroom_bytes: int = 0

    @property
    def name(self) -> str:
        """Short form for outputs and logs, e.g. ``model_offload+vae_slicing+vae_tiling``."""
        flags = [
            flag
            for flag, on in (
                ("vae_slicing", self.vae_slicing),
                ("vae_tiling", self.vae_tiling),
                ("attention_slicing", self.attention_slicing),
            )
            if on
        ]
        return "+".join([self.placement, *flags])


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def batch_headroom(headroom_bytes: int, max_batch: int, per_image_bytes: int = DEFAULT_PER_IMAGE) -> int:
    """Headroom for calls of up to ``max_batch`` images (VAE sliced: only the activations grow)."""
    return headroom_bytes + max(0, max_batch - 1) * per_image_bytes


def _short(what: str, free_bytes: int, need: int, detail: str) -> PermanentError:
    return PermanentError(
        f"{what} does not fit the GPU memory it may use: it needs {_gb(need)} ({detail}) "
        f"and has {_gb(free_bytes)}",
        code=MEMORY_SHORT,
    )


def choose_memory_strategy(
    device: str,
    free_bytes: int | None,
    model_bytes: int,
    *,
    largest_component_bytes: int | None = None,
    headroom_bytes: int = DEFAULT_HEADROOM,
    quantized: bool = False,
    sequential: bool = True,
    max_batch: int = 1,
    per_image_bytes: int = DEFAULT_PER_IMAGE,
    what: str = "the model",
) -> MemoryStrategy:
    """Pick a :class:`MemoryStrategy` for ``model_bytes`` of weights on ``device``.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; anything but CUDA means ``cpu`` placement.
        free_bytes: accelerator memory this model may use (its share of the process budget, or what
            is free), or ``None`` when unknown (then model offload, which fits any GPU that can hold
            the largest component).
        model_bytes: bytes of all weights that would be on the accelerator.
        largest_component_bytes: bytes of the largest single component; estimated as 75 % of
            ``model_bytes`` when not given.
        headroom_bytes: memory to keep free for one image's activations, the VAE decode and slack.
        quantized: the denoiser holds quantized (GGUF) weights: never sequential offload.
        sequential: whether the automatic choice may fall to sequential offload at all.
        max_batch: images in one call at most; headroom grows by ``per_image_bytes`` per extra image
            and VAE slicing is on whenever it is above 1.
        what: the pipeline's name, for the refusal message.

    Raises:
        PermanentError: ``gpu_memory_short``, when not even model offload fits and sequential
            offload is ruled out; the message has the sizes.
    """
    if not device.startswith("cuda"):
        return MemoryStrategy("cpu", reason=f"device {device!r} is not CUDA: weights stay in host memory")
    headroom = batch_headroom(headroom_bytes, max_batch, per_image_bytes)
    batched = max_batch > 1
    largest = (
        largest_component_bytes
        if largest_component_bytes is not None
        else math.ceil(model_bytes * LARGEST_COMPONENT_SHARE)
    )
    if free_bytes is None:
        return MemoryStrategy(
            "model_offload",
            vae_slicing=True,
            vae_tiling=True,
            reason="free GPU memory unknown: offloading whole components is the safe default",
            resident_bytes=0,
            headroom_bytes=largest + headroom,
        )
    if free_bytes >= model_bytes + headroom:
        tight = free_bytes < model_bytes + 2 * headroom
        return MemoryStrategy(
            "gpu",
            vae_slicing=tight or batched,
            vae_tiling=tight,
            reason=f"{_gb(free_bytes)} holds all {_gb(model_bytes)} of weights plus {_gb(headroom)} headroom"
            + (f" for batches of {max_batch}" if batched else "")
            + (" (tight: VAE slicing/tiling on)" if tight else ""),
            resident_bytes=model_bytes,
            headroom_bytes=headroom,
        )
    if free_bytes >= largest + headroom:
        return MemoryStrategy(
            "model_offload",
            vae_slicing=True,
            vae_tiling=True,
            reason=f"{_gb(free_bytes)} < {_gb(model_bytes)} of weights + {_gb(headroom)} headroom, "
            f"but holds the largest component ({_gb(largest)})",
            resident_bytes=0,
            headroom_bytes=largest + headroom,
        )
    detail = f"largest component {_gb(largest)} + headroom {_gb(headroom)}"
    if batched:
        detail += f" for batches of {max_batch}"
    if quantized:
        raise _short(
            what,
            free_bytes,
            largest + headroom,
            detail + "; a quantized (GGUF) transformer cannot be streamed layer by layer "
            "(sequential offload loses its quantization type: diffusers#14691)",
        )
    if not sequential:
        raise _short(
            what,
            free_bytes,
            largest + headroom,
            detail + "; set memory_strategy: sequential_offload to stream the weights layer by layer, "
            "many times slower",
        )
    return MemoryStrategy(
        "sequential_offload",
        vae_slicing=True,
        vae_tiling=True,
        attention_slicing=free_bytes < 2 * headroom_bytes,
        reason=f"{_gb(free_bytes)} cannot hold the largest component ({_gb(largest)}) plus headroom: "
        "streaming weights layer by layer",
        headroom_bytes=headroom,
    )


def forced_strategy(
    choice: StrategyChoice,
    device: str,
    *,
    quantized: bool = False,
    max_batch: int = 1,
    what: str = "the model",
) -> MemoryStrategy | None:
    """The strategy an operator forced in config, or ``None`` for ``"auto"``.

    Raises:
        PermanentError: ``gpu_memory_short``, for sequential offload of a quantized transformer
            (it would fail at the first step with ``KeyError: None``).
    """
    if choice == "auto":
        return None
    if choice != "cpu" and not device.startswith("cuda"):
        return MemoryStrategy("cpu", reason=f"configured {choice!r} needs CUDA; device is {device!r}")
    if choice == "sequential_offload" and quantized:
        raise PermanentError(
            f"{what}: memory_strategy sequential_offload cannot run a quantized (GGUF) transformer: "
            "offloaded weights lose their quantization type (diffusers#14691); use model_offload or gpu",
            code=MEMORY_SHORT,
        )
    return MemoryStrategy(
        choice, vae_slicing=max_batch > 1, vae_tiling=choice != "gpu", reason="set in config"
    )


EncoderPlacement = Literal["pipeline", "stream", "cpu"]


def place_text_encoders(
    device: str,
    free_bytes: int | None,
    *,
    denoiser_bytes: int,
    encoder_bytes: int,
    headroom_bytes: int,
) -> tuple[EncoderPlacement, str]:
    """Where the text encoders (T5-XXL, CLIP) run, from their measured size and the memory share.

    ``pipeline``
        with the rest of the pipeline, wherever it is placed: on a GPU whose share holds them next to
        the denoiser plus the headroom, or in host memory on a CPU-only service.
    ``stream``
        kept in host memory and streamed to the GPU layer by layer when a prompt is encoded (one
        T5 block, ~0.4 GB, on the GPU at a time; ~9.5 GB crosses PCIe per new prompt, about a
        second on an L4). Used when the encoders do not fit beside the denoiser: the denoiser stays
        on the GPU between jobs and the encoding still runs on the GPU, not on a few vCPUs (bf16
        T5-XXL on Cloud Run CPUs takes 10-30 s per prompt).
    ``cpu``
        in host memory while the denoiser is on the GPU (only when configured: slow).
    """
    if not device.startswith("cuda"):
        return "pipeline", f"device {device!r} is not CUDA: everything runs in host memory"
    if free_bytes is not None and free_bytes >= denoiser_bytes + encoder_bytes + headroom_bytes:
        return "pipeline", (
            f"{_gb(free_bytes)} holds the text encoders ({_gb(encoder_bytes)}) beside the denoiser "
            f"({_gb(denoiser_bytes)}) and headroom"
        )
    return "stream", (
        f"the text encoders ({_gb(encoder_bytes)}) do not fit beside the denoiser ({_gb(denoiser_bytes)}) "
        f"and headroom in {_gb(free_bytes) if free_bytes is not None else 'unknown memory'}: streamed "
        "to the GPU layer by layer per new prompt"
    )


# -- one GPU memory budget per process -------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """What one loaded pipeline holds of the budget: weights kept on the GPU, and the memory a
    call of it needs on top (activations, and for model offload the largest component too)."""

    resident_bytes: int
    headroom_bytes: int


class GpuBudget:
    """The GPU memory of one process, handed out to its pipelines as they load (by the model pool).

    A pipeline plans against :meth:`share`: the total less the weights the others keep on the
    GPU, less the call headroom of the others that may run at the same time as it (none when the
    model pool lets one pipeline on the model at a time, ``concurrent=1``; all of them when any
    number may run). So the plans add up: every loaded pipeline's weights plus the headroom of any
    ``concurrent`` of them running at once stay within ``total_bytes``, whatever the load order.
    """

    def __init__(self, total_bytes: int, *, concurrent: int | None = None, source: str = "") -> None:
        self.total_bytes = total_bytes
        self.concurrent = concurrent
        self.source = source or "configured"
        self.grants: dict[str, Grant] = {}
        self._guard = threading.Lock()

    def share(self, name: str) -> int:
        """Bytes pipeline ``name`` may plan its weights and its own call headroom against."""
        with self._guard:
            others = [g for n, g in self.grants.items() if n != name]
        resident = sum(g.resident_bytes for g in others)
        headrooms = sorted((g.headroom_bytes for g in others), reverse=True)
        alongside = headrooms if self.concurrent is None else headrooms[: max(0, self.concurrent - 1)]
        return max(0, self.total_bytes - resident - sum(alongside))

    def grant(self, name: str, grant: Grant) -> None:
        with self._guard:
            self.grants[name] = grant

    def release(self, name: str) -> None:
        with self._guard:
            self.grants.pop(name, None)

    def summary(self) -> dict[str, object]:
        """For ``/healthz`` and logs: the total and what each pipeline holds, in GB."""
        with self._guard:
            grants = dict(self.grants)
        return {
            "total_gb": round(self.total_bytes / 1e9, 2),
            "source": self.source,
            "concurrent": self.concurrent,
            "pipelines": {
                n: {
                    "resident_gb": round(g.resident_bytes / 1e9, 2),
                    "headroom_gb": round(g.headroom_bytes / 1e9, 2),
                }
                for n, g in sorted(grants.items())
            },
        }


@dataclass(frozen=True)
class Lease:
    """A pipeline's claim on the budget while it loads (see :func:`lend`)."""

    budget: GpuBudget
    name: str
    max_batch: int = 1

    def share(self) -> int:
        return self.budget.share(self.name)

    def take(self, strategy: MemoryStrategy) -> None:
        self.budget.grant(self.name, Grant(strategy.resident_bytes, strategy.headroom_bytes))

    @property
    def taken(self) -> bool:
        return self.name in self.budget.grants


_LEASE: ContextVar[Lease | None] = ContextVar("gpu_memory_lease", default=None)


@contextmanager
def lend(budget: GpuBudget, name: str, *, max_batch: int = 1) -> Iterator[Lease]:
    """Around one pipeline's load: its planner reads the share from :func:`current_lease`."""
    lease = Lease(budget, name, max_batch)
    token = _LEASE.set(lease)
    try:
        yield lease
    finally:
        _LEASE.reset(token)


def current_lease() -> Lease | None:
    """The lease of the pipeline loading in this thread, or ``None`` outside the model pool."""
    return _LEASE.get()
