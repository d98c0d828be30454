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
CUDA context and allocator slack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Placement = Literal["cpu", "gpu", "model_offload", "sequential_offload"]
StrategyChoice = Literal["auto", "cpu", "gpu", "model_offload", "sequential_offload"]

GiB = 2**30
DEFAULT_HEADROOM = 3 * GiB
# Without a measured largest component, assume the denoiser holds about three quarters of the weights
# (FLUX.1 Fill Q8 + bf16 T5: 12.7 of 22.6 GB; Qwen-Image-Edit bf16: 41 of 58 GB).
LARGEST_COMPONENT_SHARE = 0.75


@dataclass(frozen=True)
class MemoryStrategy:
    """Where weights live and which memory savers are on; ``reason`` says why (it is logged)."""

    placement: Placement
    vae_slicing: bool = False
    vae_tiling: bool = False
    attention_slicing: bool = False
    reason: str = ""

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


def choose_memory_strategy(
    device: str,
    free_bytes: int | None,
    model_bytes: int,
    *,
    largest_component_bytes: int | None = None,
    headroom_bytes: int = DEFAULT_HEADROOM,
) -> MemoryStrategy:
    """Pick a :class:`MemoryStrategy` for ``model_bytes`` of weights on ``device``.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; anything but CUDA means ``cpu`` placement.
        free_bytes: free accelerator memory now, or ``None`` when unknown (then model offload,
            which fits any GPU that can hold the largest component).
        model_bytes: bytes of all weights that would be on the accelerator.
        largest_component_bytes: bytes of the largest single component; estimated as 75 % of
            ``model_bytes`` when not given.
        headroom_bytes: memory to keep free for activations, the VAE decode and allocator slack.
    """
    if not device.startswith("cuda"):
        return MemoryStrategy("cpu", reason=f"device {device!r} is not CUDA: weights stay in host memory")
    if free_bytes is None:
        return MemoryStrategy(
            "model_offload",
            vae_slicing=True,
            vae_tiling=True,
            reason="free GPU memory unknown: offloading whole components is the safe default",
        )
    largest = (
        largest_component_bytes
        if largest_component_bytes is not None
        else math.ceil(model_bytes * LARGEST_COMPONENT_SHARE)
    )
    if free_bytes >= model_bytes + headroom_bytes:
        tight = free_bytes < model_bytes + 2 * headroom_bytes
        return MemoryStrategy(
            "gpu",
            vae_slicing=tight,
            vae_tiling=tight,
            reason=f"{_gb(free_bytes)} free holds all {_gb(model_bytes)} of weights plus headroom"
            + (" (tight: VAE slicing/tiling on)" if tight else ""),
        )
    if free_bytes >= largest + headroom_bytes:
        return MemoryStrategy(
            "model_offload",
            vae_slicing=True,
            vae_tiling=True,
            reason=f"{_gb(free_bytes)} free < {_gb(model_bytes)} of weights + headroom, "
            f"but holds the largest component ({_gb(largest)})",
        )
    return MemoryStrategy(
        "sequential_offload",
        vae_slicing=True,
        vae_tiling=True,
        attention_slicing=free_bytes < 2 * headroom_bytes,
        reason=f"{_gb(free_bytes)} free cannot hold the largest component ({_gb(largest)}) plus headroom: "
        "streaming weights layer by layer",
    )


def forced_strategy(choice: StrategyChoice, device: str) -> MemoryStrategy | None:
    """The strategy an operator forced in config, or ``None`` for ``"auto"``."""
    if choice == "auto":
        return None
    if choice != "cpu" and not device.startswith("cuda"):
        return MemoryStrategy("cpu", reason=f"configured {choice!r} needs CUDA; device is {device!r}")
    return MemoryStrategy(choice, vae_tiling=choice != "gpu", reason="set in config")
