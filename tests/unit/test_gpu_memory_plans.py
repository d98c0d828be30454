"""GPU memory plans that must hold on a real L4 and H100, checked where the CPU can check them:

- a GGUF transformer is never streamed layer by layer (accelerate re-creates the weights without
  their quantization type: ``KeyError: None``, reproduced here on the CPU);
- batches get VAE slicing and more headroom;
- one budget per process, handed out by the model pool: each pipeline plans against its share and
  one that cannot fit is refused at start with the numbers;
- text encoders placed by their measured size (streamed to the GPU when they do not fit beside the
  denoiser), and a streamed encoder gives the same image as one placed with the pipeline.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import PermanentError
from core.spec import Catalog, RunContext
from devkit import tiny_diffusers as tiny  # sets HF_HUB_OFFLINE before diffusers loads
from devkit.sample_images import make_sample
from gpu_service.pool import ModelPool
from infra.settings import Batching
from pipelines.imaging.diffusion import apply_memory_strategy, plan_memory
from pipelines.imaging.fields import ImageLimitsConfig
from pipelines.imaging.memory import (
    MEMORY_SHORT,
    GpuBudget,
    MemoryStrategy,
    choose_memory_strategy,
    forced_strategy,
    lend,
    place_text_encoders,
)
from pipelines.inpaint import SPEC as INPAINT
from pipelines.inpaint import InpaintConfig, InpaintInputs

GB = 10**9
L4 = 22 * GB  # what a 24 GB L4 has free after the CUDA context
# FLUX.1 Fill: GGUF Q8 transformer, VAE, and the bf16 text encoders (T5-XXL + CLIP-L).
FLUX_Q8_TRANSFORMER = int(12.7 * GB)
FLUX_VAE = int(0.17 * GB)
FLUX_ENCODERS = int(9.75 * GB)
# Wan 2.1 T2V 1.3B: transformer, UMT5-XXL, VAE; its headroom is 6 GiB.
WAN = {"transformer": int(2.8 * GB), "text_encoder": int(11.4 * GB), "vae": int(0.5 * GB)}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-flux-plans")
    model_dir = tiny.build_tiny_fluxfill(root / "flux")
    return {"dir": model_dir, "gguf": tiny.write_flux_transformer_gguf_q8(model_dir, root / "t-Q8_0.gguf")}


def _config(flux: dict[str, Path], **overrides: Any) -> InpaintConfig:
    base: dict[str, Any] = {
        "backend": "flux",
        "model_dir": str(flux["dir"]),
        "device": "cpu",
        "max_sequence_length": 32,
    }
    return InpaintConfig.model_validate({**base, **overrides})


# -- item 1: a GGUF transformer and sequential offload ------------------------------------------


def test_a_gguf_layer_moved_to_the_meta_device_loses_its_quantization_type(flux: dict[str, Path]) -> None:
    """What sequential offload does to every layer, and why it is never chosen for GGUF weights."""
    from accelerate.utils import set_module_tensor_to_device

    from pipelines.inpaint.flux_backend import load_flux_fill

    pipe = load_flux_fill(_config(flux, transformer_gguf=str(flux["gguf"])), "cpu", torch.float32)
    layer = next(m for m in pipe.transformer.modules() if type(m).__name__ == "GGUFLinear")
    with pytest.raises(KeyError) as exc:
        set_module_tensor_to_device(layer, "weight", "meta")
    assert exc.value.args == (None,)


def test_sequential_offload_of_a_gguf_pipeline_is_refused_with_a_named_error(flux: dict[str, Path]) -> None:
    from pipelines.inpaint.flux_backend import load_flux_fill

    pipe = load_flux_fill(_config(flux, transformer_gguf=str(flux["gguf"])), "cpu", torch.float32)
    with pytest.raises(PermanentError) as exc:
        apply_memory_strategy(pipe, MemoryStrategy("sequential_offload"), "cpu")
    assert exc.value.code == MEMORY_SHORT and "GGUF" in str(exc.value)


def test_a_gguf_flux_configured_for_sequential_offload_is_refused_at_load(flux: dict[str, Path]) -> None:
    config = _config(
        flux, transformer_gguf=str(flux["gguf"]), device="cuda", memory_strategy="sequential_offload"
    )
    with pytest.raises(PermanentError) as exc:
        INPAINT.load(config)
    assert exc.value.code == MEMORY_SHORT and "diffusers#14691" in str(exc.value)


def test_a_quantized_transformer_gets_model_offload_or_a_refusal_with_numbers_never_streaming() -> None:
    sizes = FLUX_Q8_TRANSFORMER + FLUX_VAE + FLUX_ENCODERS
    kept = choose_memory_strategy(
        "cuda", 18 * GB, sizes, largest_component_bytes=FLUX_Q8_TRANSFORMER, quantized=True
    )
    assert kept.placement == "model_offload"
    # 14 GB (an L4 that already holds another pipeline): the old plan streamed layer by layer.
    with pytest.raises(PermanentError) as exc:
        choose_memory_strategy(
            "cuda",
            14 * GB,
            sizes,
            largest_component_bytes=FLUX_Q8_TRANSFORMER,
            quantized=True,
            what="inpaint",
        )
    message = str(exc.value)
    assert exc.value.code == MEMORY_SHORT
    assert "inpaint" in message and "needs 15.9 GB" in message and "has 14.0 GB" in message
    with pytest.raises(PermanentError):
        forced_strategy("sequential_offload", "cuda", quantized=True)


def test_the_image_pipelines_refuse_rather_than_stream_a_model_that_does_not_fit() -> None:
    qwen = {"transformer": 41 * GB, "text_encoder": 16 * GB, "vae": GB}
    with lend(GpuBudget(L4), "edit"), pytest.raises(PermanentError) as exc:
        plan_memory("auto", "cuda", qwen, what="edit")
    assert "needs 44.2 GB" in str(exc.value) and "has 22.0 GB" in str(exc.value)
    assert "sequential_offload" in str(exc.value)  # the way to accept the slow path is named


# -- item 5: batches -----------------------------------------------------------------------------


def test_a_batched_pipeline_slices_the_vae_and_keeps_headroom_per_image() -> None:
    denoiser = FLUX_Q8_TRANSFORMER + FLUX_VAE
    alone = choose_memory_strategy("cuda", L4, denoiser, largest_component_bytes=FLUX_Q8_TRANSFORMER)
    batched = choose_memory_strategy(
        "cuda", L4, denoiser, largest_component_bytes=FLUX_Q8_TRANSFORMER, max_batch=4
    )
    assert alone.name == "gpu"  # room for two headrooms: no slicing for one image
    assert batched.placement == "gpu" and batched.vae_slicing
    assert batched.headroom_bytes > alone.headroom_bytes + 3 * 2**30 - 1
    # Eight 1 MP images need more headroom than an L4 has beside the quantized transformer: the
    # batch size is refused at start rather than running out of memory on the first full batch.
    with pytest.raises(PermanentError, match="for batches of 8"):
        choose_memory_strategy(
            "cuda", L4, denoiser, largest_component_bytes=FLUX_Q8_TRANSFORMER, max_batch=8, quantized=True
        )


def test_the_pool_plans_a_batching_pipeline_for_its_batch_size() -> None:
    spec = _spec("inpaint", {"transformer": FLUX_Q8_TRANSFORMER, "vae": FLUX_VAE}, quantized=True)
    pool = ModelPool(
        Catalog(specs={"inpaint": spec}),  # type: ignore[dict-item]
        {"inpaint": Batching(max_batch=4, max_wait_ms=10)},
        gpu_budget=GpuBudget(L4, concurrent=1),
    )
    pipeline, _ = pool.get(spec)  # type: ignore[arg-type]
    assert pipeline.strategy.vae_slicing and pipeline.strategy.placement == "gpu"


# -- item 9: one budget per process ----------------------------------------------------------------


def _spec(name: str, sizes: dict[str, int], *, quantized: bool = False, headroom: int | None = None) -> Any:
    """A pipeline spec whose loader plans its memory for a CUDA device of the given component
    sizes (the planning is what is under test; nothing is placed)."""

    def load(config: Any) -> Any:
        extra = {} if headroom is None else {"headroom_bytes": headroom}
        strategy = plan_memory("auto", "cuda", sizes, what=name, quantized=quantized, **extra)
        return SimpleNamespace(strategy=strategy)

    return SimpleNamespace(name=name, config=ImageLimitsConfig, load=load)


def test_pipelines_sharing_an_l4_plan_against_their_share_and_the_one_that_cannot_fit_is_refused() -> None:
    inpaint = _spec("inpaint", {"transformer": FLUX_Q8_TRANSFORMER, "vae": FLUX_VAE}, quantized=True)
    t2v = _spec("t2v", WAN, headroom=6 * 2**30)
    pool = ModelPool(
        Catalog(specs={"inpaint": inpaint, "t2v": t2v}),  # type: ignore[dict-item]
        model_concurrency=1,
        gpu_budget=GpuBudget(L4, concurrent=1),
    )
    pool.preload(["inpaint", "t2v"])
    assert pool.states()["inpaint"] == "ready"
    first, _ = pool.get(inpaint)
    assert first.strategy.placement == "gpu"
    # Wan alone would fit an L4 (14.7 GB + 6 GiB); next to the resident Flux transformer its share
    # is 9.1 GB, which cannot hold even its 11.4 GB encoder: refused at start, with the numbers.
    why = pool.states()["t2v"]
    assert why.startswith("failed: PermanentError") and "has 9.1 GB" in why and "needs 17.8 GB" in why
    with pytest.raises(PermanentError) as exc:
        pool.get(t2v)
    assert exc.value.code == "pipeline_unavailable"


def test_pipelines_that_may_run_at_once_reserve_each_others_headroom() -> None:
    budget = GpuBudget(40 * GB, concurrent=None)
    with lend(budget, "a"):
        a = plan_memory("auto", "cuda", {"transformer": 10 * GB}, what="a")
    with lend(budget, "b"):
        b = plan_memory("auto", "cuda", {"transformer": 10 * GB}, what="b")
    # One at a time, b's share would be 30 GB; beside a running a it is 30 GB less a's headroom.
    assert budget.share("b") == 40 * GB - a.resident_bytes - a.headroom_bytes
    assert a.placement == b.placement == "gpu"
    one_at_a_time = GpuBudget(40 * GB, concurrent=1)
    one_at_a_time.grants = dict(budget.grants)
    assert one_at_a_time.share("b") == 30 * GB


def test_a_pipeline_without_a_plan_is_charged_what_its_load_took() -> None:
    plain = SimpleNamespace(name="transcribe", config=ImageLimitsConfig, load=lambda config: object())
    budget = GpuBudget(L4, concurrent=1)
    pool = ModelPool(Catalog(specs={"transcribe": plain}), gpu_budget=budget)  # type: ignore[dict-item]
    pool.get(plain)  # type: ignore[arg-type]
    assert "transcribe" in budget.grants  # measured (0 here: no CUDA), so the others see it


# -- item 6: where the text encoders run ---------------------------------------------------------


def test_text_encoders_are_placed_by_their_measured_size() -> None:
    denoiser = FLUX_Q8_TRANSFORMER + FLUX_VAE
    on_l4, why = place_text_encoders(
        "cuda", L4, denoiser_bytes=denoiser, encoder_bytes=FLUX_ENCODERS, headroom_bytes=3 * 2**30
    )
    on_h100, _ = place_text_encoders(
        "cuda", 78 * GB, denoiser_bytes=denoiser, encoder_bytes=FLUX_ENCODERS, headroom_bytes=3 * 2**30
    )
    on_cpu, _ = place_text_encoders(
        "cpu", None, denoiser_bytes=denoiser, encoder_bytes=FLUX_ENCODERS, headroom_bytes=3 * 2**30
    )
    assert (on_l4, on_h100, on_cpu) == ("stream", "pipeline", "pipeline")
    assert "9.8 GB" in why  # the measured size is in the log line


def _inpaint(pipeline: Any, files: dict[str, Path], workdir: Path) -> np.ndarray:
    workdir.mkdir(parents=True)
    job = {
        "image": "gs://bucket/i.png",
        "mask": "gs://bucket/m.png",
        "seed": 5,
        "steps": 2,
        "prompt": "a red door",
    }
    result = pipeline.run(InpaintInputs.model_validate(job), RunContext("plan", workdir, files))
    with Image.open(result.files[result.outputs.result_file]) as written:
        return np.asarray(written.convert("RGB"))


def test_streamed_text_encoders_give_the_same_image(flux: dict[str, Path], tmp_path: Path) -> None:
    _clean, marked, mask = make_sample(64, 48)
    marked.save(tmp_path / "image.png")
    mask.save(tmp_path / "mask.png")
    files = {"image": tmp_path / "image.png", "mask": tmp_path / "mask.png"}
    placed = INPAINT.load(_config(flux))
    streamed = INPAINT.load(_config(flux, text_encoder_device="stream"))
    backend: Any = getattr(streamed, "backend")  # noqa: B009
    assert backend.encoder_placement == "stream"
    assert backend.pipe.text_encoder_2.device.type == "meta"  # weights wait in host memory
    assert (_inpaint(placed, files, tmp_path / "a") == _inpaint(streamed, files, tmp_path / "b")).all()
