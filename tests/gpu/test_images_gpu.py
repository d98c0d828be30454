"""GPU checks for the image pipelines (``inpaint`` flux backend, ``edit``). Auto-skipped without CUDA.

Two groups:

- tiny random models on CUDA (no downloads): every memory strategy places and runs, GGUF on the
  GPU with a bf16 compute dtype, text encoders kept on the CPU, adapters in and out, peak memory
  reported;
- real weights from local directories named by environment variables (skipped when unset):

  ``GPUJOBS_FLUX_FILL_DIR``   FLUX.1-Fill-dev in diffusers layout
  ``GPUJOBS_FLUX_FILL_GGUF``  a Q8_0 GGUF of its transformer (e.g. flux1-fill-dev-Q8_0.gguf)
  ``GPUJOBS_EDIT_MODEL_DIR``  Qwen-Image-Edit (or another supported edit pipeline) in diffusers layout

Run with ``pytest tests/gpu/test_images_gpu.py -m gpu -s`` to see timings and peak memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.spec import RunContext
from devkit import tiny_diffusers as tiny  # sets HF_HUB_OFFLINE before diffusers loads
from devkit.gpu import L4_BUDGET_BYTES, local_model
from devkit.sample_images import make_sample
from pipelines.edit import SPEC as EDIT
from pipelines.edit import EditConfig, EditInputs
from pipelines.inpaint import SPEC as INPAINT
from pipelines.inpaint import InpaintConfig, InpaintInputs

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-gpu")
    flux = tiny.build_tiny_fluxfill(root / "flux")
    ip2p = tiny.build_tiny_instruct_pix2pix(root / "ip2p")
    tiny.write_tiny_lora(flux, root / "loras" / "flux", kind="flux")
    tiny.write_tiny_lora(ip2p, root / "loras" / "sd", kind="sd")
    return {
        "flux": flux,
        "ip2p": ip2p,
        "gguf": tiny.write_flux_transformer_gguf_q8(flux, root / "flux-Q8_0.gguf"),
        "loras": root / "loras",
    }


def _sample(tmp: Path, width: int, height: int) -> dict[str, Path]:
    _clean, marked, mask = make_sample(width, height)
    marked.save(tmp / "image.png")
    mask.save(tmp / "mask.png")
    return {"image": tmp / "image.png", "mask": tmp / "mask.png"}


def _inpaint(pipeline: Any, files: dict[str, Path], workdir: Path, **inputs: Any) -> tuple[Any, np.ndarray]:
    workdir.mkdir(parents=True, exist_ok=True)
    job = {"image": "gs://bucket/i.png", "mask": "gs://bucket/m.png", "seed": 1, **inputs}
    result = pipeline.run(InpaintInputs.model_validate(job), RunContext("gpu", workdir, files))
    with Image.open(result.files[result.outputs.result_file]) as written:
        return result.outputs, np.asarray(written.convert("RGB"))


def _outside_kept(files: dict[str, Path], out: np.ndarray) -> bool:
    image = np.asarray(Image.open(files["image"]).convert("RGB"))
    inside = np.asarray(Image.open(files["mask"])) >= 128
    return bool((out[~inside] == image[~inside]).all())


# -- tiny models on CUDA ----------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["gpu", "model_offload", "sequential_offload"])
def test_inpaint_tiny_random_fluxfill_on_cuda_with_each_memory_strategy(
    tiny_models: dict[str, Path], tmp_path: Path, strategy: str
) -> None:
    pipeline = INPAINT.load(
        InpaintConfig(
            backend="flux",
            model_dir=str(tiny_models["flux"]),
            device="cuda",
            dtype="bfloat16",
            memory_strategy=strategy,  # type: ignore[arg-type]
            max_sequence_length=32,
        )
    )
    files = _sample(tmp_path, 100, 75)
    outputs, out = _inpaint(pipeline, files, tmp_path / "w", steps=3)
    assert outputs.memory_strategy.startswith(strategy)
    assert out.shape == (75, 100, 3) and _outside_kept(files, out)
    assert outputs.peak_gpu_memory_bytes and outputs.peak_gpu_memory_bytes > 0


def test_inpaint_tiny_random_fluxfill_gguf_on_cuda_auto_strategy_and_lora(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    pipeline = INPAINT.load(
        InpaintConfig(
            backend="flux",
            model_dir=str(tiny_models["flux"]),
            transformer_gguf=str(tiny_models["gguf"]),
            device="cuda",
            text_encoder_device="cpu",
            max_sequence_length=32,
            lora_dir=str(tiny_models["loras"]),
        )
    )
    files = _sample(tmp_path, 128, 96)
    base, first = _inpaint(pipeline, files, tmp_path / "a", steps=3)
    _, adapted = _inpaint(
        pipeline, files, tmp_path / "b", steps=3, loras=[{"path": "flux/pytorch_lora_weights.safetensors"}]
    )
    again, second = _inpaint(pipeline, files, tmp_path / "c", steps=3)
    assert base.memory_strategy == "gpu"  # a tiny model fits anywhere
    assert (first != adapted).any() and (first == second).all()
    assert again.prompt_cache_hit is True
    assert _outside_kept(files, first)


@pytest.mark.parametrize("strategy", ["gpu", "model_offload", "sequential_offload"])
def test_edit_tiny_random_instruct_pix2pix_on_cuda_with_each_memory_strategy(
    tiny_models: dict[str, Path], tmp_path: Path, strategy: str
) -> None:
    pipeline = EDIT.load(
        EditConfig(
            model_dir=str(tiny_models["ip2p"]),
            device="cuda",
            dtype="float16",
            memory_strategy=strategy,  # type: ignore[arg-type]
            lora_dir=str(tiny_models["loras"]),
        )
    )
    files = _sample(tmp_path, 100, 75)
    job = {"image": "gs://bucket/i.png", "instruction": "make it snow", "steps": 3, "seed": 2}
    ctx = RunContext("gpu", tmp_path, {"image": files["image"]})
    result = pipeline.run(EditInputs.model_validate(job), ctx)
    assert result.outputs.memory_strategy.startswith(strategy)
    assert result.outputs.peak_gpu_memory_bytes and result.outputs.peak_gpu_memory_bytes > 0
    with Image.open(result.files[result.outputs.result_file]) as written:
        assert written.size == (100, 75)


# -- real weights -----------------------------------------------------------------------------


@pytest.mark.slow
def test_inpaint_flux_fill_gguf_q8_fits_an_l4_budget(tmp_path: Path, record_property: Any) -> None:
    """FLUX.1 Fill, Q8 transformer on the GPU, T5/CLIP on the CPU: peak under an L4's free memory."""
    model_dir, gguf = local_model("GPUJOBS_FLUX_FILL_DIR"), local_model("GPUJOBS_FLUX_FILL_GGUF")
    pipeline = INPAINT.load(
        InpaintConfig(
            backend="flux",
            model_dir=str(model_dir),
            transformer_gguf=str(gguf),
            device="cuda",
            dtype="bfloat16",
            text_encoder_device="cpu",
        )
    )
    files = _sample(tmp_path, 1024, 768)
    outputs, out = _inpaint(pipeline, files, tmp_path / "a", prompt="a clear evening sky", steps=28)
    again, _ = _inpaint(pipeline, files, tmp_path / "b", prompt="a clear evening sky", steps=28)
    record_property("timings_first", outputs.timings)
    record_property("timings_cached_prompt", again.timings)
    record_property("peak_gpu_memory_bytes", outputs.peak_gpu_memory_bytes)
    print(f"flux fill Q8: {outputs.memory_strategy}, peak {outputs.peak_gpu_memory_bytes / 1e9:.1f} GB")
    print(f"  first job {outputs.timings}\n  cached prompt {again.timings}")
    assert _outside_kept(files, out) and out.shape == (768, 1024, 3)
    assert outputs.peak_gpu_memory_bytes is not None and outputs.peak_gpu_memory_bytes < L4_BUDGET_BYTES
    assert again.prompt_cache_hit is True and again.timings["encode_prompt"] < 0.1


@pytest.mark.slow
def test_inpaint_flux_fill_auto_strategy_under_an_l4_sized_budget(tmp_path: Path) -> None:
    """With T5 on the GPU path too, ``auto`` picks model offload when only ~22 GB is free."""
    from pipelines.imaging.memory import choose_memory_strategy

    model_dir, gguf = local_model("GPUJOBS_FLUX_FILL_DIR"), local_model("GPUJOBS_FLUX_FILL_GGUF")
    pipeline = INPAINT.load(
        InpaintConfig(backend="flux", model_dir=str(model_dir), transformer_gguf=str(gguf), device="cuda")
    )
    backend: Any = getattr(pipeline, "backend")  # noqa: B009
    from pipelines.imaging.diffusion import component_bytes

    sizes = component_bytes(backend.pipe)
    l4_choice = choose_memory_strategy(
        "cuda", L4_BUDGET_BYTES, sum(sizes.values()), largest_component_bytes=max(sizes.values())
    )
    assert l4_choice.placement == "model_offload", sizes
    files = _sample(tmp_path, 768, 768)
    outputs, out = _inpaint(pipeline, files, tmp_path / "a", steps=8)
    assert _outside_kept(files, out)
    print(
        f"flux fill auto: {outputs.memory_strategy}, peak {outputs.peak_gpu_memory_bytes}, {outputs.timings}"
    )


@pytest.mark.slow
def test_edit_real_model_runs_and_reports_its_memory_strategy(tmp_path: Path, record_property: Any) -> None:
    model_dir = local_model("GPUJOBS_EDIT_MODEL_DIR")
    pipeline = EDIT.load(EditConfig(model_dir=str(model_dir), device="cuda"))
    files = _sample(tmp_path, 768, 576)
    job = {
        "image": "gs://bucket/i.png",
        "instruction": "make it a snowy winter scene",
        "steps": 20,
        "seed": 3,
    }
    result = pipeline.run(
        EditInputs.model_validate(job), RunContext("gpu", tmp_path, {"image": files["image"]})
    )
    outputs = result.outputs
    record_property("memory_strategy", outputs.memory_strategy)
    record_property("timings", outputs.timings)
    record_property("peak_gpu_memory_bytes", outputs.peak_gpu_memory_bytes)
    print(
        f"edit {outputs.backend}: {outputs.memory_strategy}, peak {outputs.peak_gpu_memory_bytes}, {outputs.timings}"
    )
    with Image.open(result.files[outputs.result_file]) as written:
        assert written.size == (768, 576)
    assert outputs.peak_gpu_memory_bytes is not None and outputs.peak_gpu_memory_bytes > 0
