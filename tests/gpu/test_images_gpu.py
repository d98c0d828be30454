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
from devkit.gpu import L4_BUDGET_BYTES, assert_same_image, l4_budget, local_model
from devkit.sample_images import make_sample
from pipelines.edit import SPEC as EDIT
from pipelines.edit import EditConfig, EditInputs
from pipelines.imaging.memory import lend
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
    assert (first != adapted).any()
    assert_same_image(first, second, device="cuda")
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


def test_inpaint_tiny_gguf_fluxfill_on_cuda_never_streams_the_quantized_transformer(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Item 1 on CUDA: a share that holds the largest component and the headroom but not all the
    weights gives model offload (the old plan streamed layer by layer: ``KeyError: None``)."""
    import torch

    from pipelines.imaging.diffusion import component_bytes
    from pipelines.imaging.memory import DEFAULT_HEADROOM, GpuBudget
    from pipelines.inpaint.flux_backend import load_flux_fill

    config = InpaintConfig(
        backend="flux",
        model_dir=str(tiny_models["flux"]),
        transformer_gguf=str(tiny_models["gguf"]),
        device="cuda",
        max_sequence_length=32,
        text_encoder_device="pipeline",
        gguf_dequantize="never",
    )
    sizes = component_bytes(load_flux_fill(config, "cuda", torch.bfloat16))
    largest, total = max(sizes.values()), sum(sizes.values())
    share = DEFAULT_HEADROOM + largest + (total - largest) // 2
    with lend(GpuBudget(share), "inpaint"):
        pipeline = INPAINT.load(config)
    files = _sample(tmp_path, 64, 48)
    outputs, out = _inpaint(pipeline, files, tmp_path / "w", steps=2)
    assert outputs.memory_strategy.startswith("model_offload")
    assert _outside_kept(files, out)


def test_inpaint_tiny_gguf_fluxfill_dequantized_once_on_cuda_gives_the_quantized_image(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Item 7: with room for the dequantized weights the GGUF layers are replaced at load (no
    dequantization per step), and the image is the one the quantized layers give."""
    base = {
        "backend": "flux",
        "model_dir": str(tiny_models["flux"]),
        "transformer_gguf": str(tiny_models["gguf"]),
        "device": "cuda",
        "max_sequence_length": 32,
    }
    kept = INPAINT.load(InpaintConfig.model_validate({**base, "gguf_dequantize": "never"}))
    once = INPAINT.load(InpaintConfig.model_validate(base))
    backend: Any = getattr(once, "backend")  # noqa: B009
    assert not any(type(m).__name__ == "GGUFLinear" for m in backend.pipe.transformer.modules())
    files = _sample(tmp_path, 64, 48)
    _, a = _inpaint(kept, files, tmp_path / "a", steps=2)
    _, b = _inpaint(once, files, tmp_path / "b", steps=2)
    assert_same_image(a, b, device="cuda")


def test_inpaint_tiny_fluxfill_streamed_text_encoders_on_cuda_give_the_same_image(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Item 6: T5 and CLIP streamed to the GPU block by block encode as if placed there."""
    base = {
        "backend": "flux",
        "model_dir": str(tiny_models["flux"]),
        "device": "cuda",
        "max_sequence_length": 32,
    }
    placed = INPAINT.load(InpaintConfig.model_validate({**base, "text_encoder_device": "pipeline"}))
    streamed = INPAINT.load(InpaintConfig.model_validate({**base, "text_encoder_device": "stream"}))
    files = _sample(tmp_path, 64, 48)
    _, a = _inpaint(placed, files, tmp_path / "a", steps=2, prompt="a red door")
    _, b = _inpaint(streamed, files, tmp_path / "b", steps=2, prompt="a red door")
    assert_same_image(a, b, device="cuda")


@pytest.mark.parametrize("plus", [False, True], ids=["QwenImageEdit", "QwenImageEditPlus"])
def test_edit_tiny_qwen_image_edit_batched_equals_solo_on_cuda(tmp_path: Path, plus: bool) -> None:
    """Items 2 and 3 on CUDA: a batch of Qwen-Image-Edit(-Plus) jobs gives each job the image it
    gets alone (up to bf16 kernel choice: PSNR and mean difference)."""
    pytest.importorskip("torchvision", reason="the Qwen2-VL image processor needs torchvision")
    from tests.unit.test_edit_gpu_paths import qwen_batched_and_alone

    model = tiny.build_tiny_qwen_image_edit(tmp_path / "qwen", plus=plus)
    for alone, batched in qwen_batched_and_alone(model, tmp_path, "cuda"):
        assert_same_image(alone, batched, device="cuda")


# -- real weights -----------------------------------------------------------------------------


@pytest.mark.slow
def test_inpaint_flux_fill_gguf_q8_fits_an_l4_budget(tmp_path: Path, record_property: Any) -> None:
    """FLUX.1 Fill, Q8 transformer, planned as on an L4 (the transformer resident, T5 and CLIP
    streamed per new prompt): peak under an L4's free memory."""
    model_dir, gguf = local_model("GPUJOBS_FLUX_FILL_DIR"), local_model("GPUJOBS_FLUX_FILL_GGUF")
    with lend(l4_budget(), "inpaint"):
        pipeline = INPAINT.load(
            InpaintConfig(
                backend="flux",
                model_dir=str(model_dir),
                transformer_gguf=str(gguf),
                device="cuda",
                dtype="bfloat16",
            )
        )
    backend: Any = getattr(pipeline, "backend")  # noqa: B009
    files = _sample(tmp_path, 1024, 768)
    outputs, out = _inpaint(pipeline, files, tmp_path / "a", prompt="a clear evening sky", steps=28)
    again, _ = _inpaint(pipeline, files, tmp_path / "b", prompt="a clear evening sky", steps=28)
    record_property("timings_first", outputs.timings)
    record_property("timings_cached_prompt", again.timings)
    record_property("peak_gpu_memory_bytes", outputs.peak_gpu_memory_bytes)
    print(
        f"flux fill Q8 (L4 plan): {outputs.memory_strategy}, encoders {backend.encoder_placement}, "
        f"peak {(outputs.peak_gpu_memory_bytes or 0) / 1e9:.1f} GB"
    )
    print(f"  first job {outputs.timings}\n  cached prompt {again.timings}")
    assert outputs.memory_strategy.startswith("gpu") and backend.encoder_placement == "stream"
    assert _outside_kept(files, out) and out.shape == (768, 1024, 3)
    assert outputs.peak_gpu_memory_bytes is not None and outputs.peak_gpu_memory_bytes < L4_BUDGET_BYTES
    assert again.prompt_cache_hit is True


@pytest.mark.slow
def test_inpaint_flux_fill_batched_under_an_l4_budget_stays_under_it(tmp_path: Path) -> None:
    """Item 5: batches of four 1 MP images planned as on an L4 (VAE sliced, headroom per image)."""
    from devkit.batching import inpaint_on_off

    model_dir, gguf = local_model("GPUJOBS_FLUX_FILL_DIR"), local_model("GPUJOBS_FLUX_FILL_GGUF")
    config = {"model_dir": str(model_dir), "transformer_gguf": str(gguf), "device": "cuda"}
    with lend(l4_budget(), "inpaint", max_batch=4):
        figures = inpaint_on_off(
            config, tmp_path, jobs=4, max_batch=4, steps=4, size=1024, same=_same_on_cuda
        )
    print(f"flux fill batched at 1 MP, L4 plan: {figures}")
    assert figures["same_results"]
    assert figures["peak_gpu_memory_bytes"] < L4_BUDGET_BYTES


def _same_on_cuda(a: Any, b: Any) -> bool:
    try:
        assert_same_image(_pixels(a), _pixels(b), device="cuda", batched=True)
    except AssertionError:
        return False
    return True


def _pixels(result: Any) -> np.ndarray:
    with Image.open(next(iter(result.files.values()))) as image:
        return np.asarray(image.convert("RGB"))


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
