"""The ``inpaint`` pipeline's flux backend on a tiny random-weight FluxFillPipeline (CPU, 2-4 steps).

Random weights paint noise, so these tests check what holds for any weights: sizes and formats,
exact pixels outside the mask, seeds, the GGUF path, adapters in and out, progress, cancellation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.errors import Cancelled, InvalidInput, PermanentError
from devkit import tiny_diffusers as tiny  # sets HF_HUB_OFFLINE before diffusers loads
from devkit.sample_images import make_sample
from pipelines.imaging.fields import FixedLora
from pipelines.inpaint import SPEC, InpaintConfig, InpaintInputs, InpaintOutputs
from pipelines.inpaint.flux_backend import FluxFillInpainter
from pipelines.inpaint.pipeline import InpaintPipeline

URIS = {"image": "gs://bucket/in/image.png", "mask": "gs://bucket/in/mask.png"}
LORA = "flux/pytorch_lora_weights.safetensors"


@dataclass
class TinyFlux:
    model_dir: Path
    gguf: Path
    lora_dir: Path

    def config(self, **overrides: Any) -> InpaintConfig:
        base: dict[str, Any] = {
            "backend": "flux",
            "model_dir": str(self.model_dir),
            "device": "cpu",
            "max_sequence_length": 32,
            "lora_dir": str(self.lora_dir),
        }
        return InpaintConfig.model_validate({**base, **overrides})

    def load(self, **overrides: Any) -> InpaintPipeline:
        pipeline = SPEC.load(self.config(**overrides))
        assert isinstance(pipeline, InpaintPipeline) and isinstance(pipeline.backend, FluxFillInpainter)
        return pipeline


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> TinyFlux:
    root = tmp_path_factory.mktemp("tiny-flux")
    model_dir = tiny.build_tiny_fluxfill(root / "tiny-flux-fill")
    gguf = tiny.write_flux_transformer_gguf_q8(model_dir, root / "tiny-flux-transformer-Q8_0.gguf")
    tiny.write_tiny_lora(model_dir, root / "loras" / "flux", kind="flux")
    tiny.write_tiny_lora(model_dir, root / "loras" / "flux-te", kind="flux", seed=2, text_encoder=True)
    return TinyFlux(model_dir, gguf, root / "loras")


@pytest.fixture(scope="module")
def fp32(flux: TinyFlux) -> InpaintPipeline:
    return flux.load()


@pytest.fixture(scope="module")
def gguf(flux: TinyFlux) -> InpaintPipeline:
    return flux.load(transformer_gguf=str(flux.gguf))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 100x75 PNG (not a multiple of 16) with a drawn mark, and its mask."""
    root = tmp_path_factory.mktemp("inputs")
    _clean, marked, mask = make_sample(100, 75)
    marked.save(root / "image.png")
    mask.save(root / "mask.png")
    return {"image": root / "image.png", "mask": root / "mask.png"}


def run(
    pipeline: InpaintPipeline,
    files: dict[str, Path],
    workdir: Path,
    progress: tiny.ProgressLog | None = None,
    **inputs: Any,
) -> tuple[InpaintOutputs, np.ndarray]:
    job = {"prompt": "a wooden bench", "steps": 2, "seed": 7, **URIS, **inputs}
    result, pixels = tiny.run_job(pipeline, InpaintInputs, job, files, workdir, progress)
    return result.outputs, pixels


def inside_diff(a: np.ndarray, b: np.ndarray, files: dict[str, Path]) -> float:
    """Mean absolute difference inside the mask (outside, every result equals the input)."""
    return float(np.abs(a - b)[original(files)[1]].mean())


def original(files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(files["image"]).convert("RGB")).astype(np.int16)
    inside = np.asarray(Image.open(files["mask"])) >= 128
    return image, inside


def test_inpaint_tiny_random_fluxfill_keeps_pixels_outside_mask(
    fp32: InpaintPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    outputs, out = run(fp32, files, tmp_path)
    image, inside = original(files)
    assert out.shape == image.shape == (75, 100, 3)
    assert (out[~inside] == image[~inside]).all()
    assert (out[inside] != image[inside]).any()  # the masked area was repainted
    assert outputs.backend == "flux" and (outputs.width, outputs.height) == (100, 75)
    assert (outputs.work_width, outputs.work_height) == (96, 80)  # multiples of 16, size restored
    assert outputs.format == "png" and outputs.result_file == "result.png"
    assert outputs.memory_strategy == "cpu" and outputs.peak_gpu_memory_bytes is None
    assert {"checks", "encode_prompt", "denoise", "total"} <= set(outputs.timings)


@pytest.mark.parametrize(("fmt", "suffix"), [("JPEG", "jpg"), ("WEBP", "webp")])
def test_inpaint_tiny_random_fluxfill_result_has_the_input_format(
    fp32: InpaintPipeline, files: dict[str, Path], tmp_path: Path, fmt: str, suffix: str
) -> None:
    converted = tmp_path / f"image.{suffix}"
    Image.open(files["image"]).save(converted, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    outputs, out = run(fp32, {**files, "image": converted}, tmp_path / "work")
    assert outputs.result_file == f"result.{suffix}" and outputs.format == fmt.lower()
    with Image.open(tmp_path / "work" / outputs.result_file) as written:
        assert written.format == fmt and written.size == (100, 75)
    if fmt == "WEBP":  # lossless in and out: still exact outside the mask
        image = np.asarray(Image.open(converted).convert("RGB")).astype(np.int16)
        inside = original(files)[1]
        assert (out[~inside] == image[~inside]).all()


def test_inpaint_tiny_random_fluxfill_same_seed_same_result_other_seed_differs(
    fp32: InpaintPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    _, first = run(fp32, files, tmp_path / "a", seed=11)
    _, again = run(fp32, files, tmp_path / "b", seed=11)
    _, other = run(fp32, files, tmp_path / "c", seed=12)
    assert (first == again).all()
    assert (first != other).any()


def test_inpaint_tiny_random_fluxfill_picks_and_reports_a_seed_when_absent(
    fp32: InpaintPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    outputs, picked = run(fp32, files, tmp_path / "a", seed=None)
    assert 0 <= outputs.seed < 2**32
    _, replay = run(fp32, files, tmp_path / "b", seed=outputs.seed)
    assert (picked == replay).all()


def test_inpaint_tiny_random_fluxfill_gguf_q8_transformer_loads_and_runs(
    gguf: InpaintPipeline, fp32: InpaintPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    backend = gguf.backend
    assert isinstance(backend, FluxFillInpainter)
    linear_types = {
        type(m).__name__ for m in backend.denoiser.transformer.modules() if "Linear" in type(m).__name__
    }
    assert linear_types == {"GGUFLinear"}

    _, quantized = run(gguf, files, tmp_path / "q")
    _, full = run(fp32, files, tmp_path / "f")
    image, inside = original(files)
    assert (quantized[~inside] == image[~inside]).all()
    assert inside_diff(quantized, full, files) < 3  # Q8 stays close to fp32


def test_inpaint_tiny_random_fluxfill_lora_applied_then_removed(
    fp32: InpaintPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    backend = fp32.backend
    assert isinstance(backend, FluxFillInpainter)
    _, baseline = run(fp32, files, tmp_path / "a")
    outputs, adapted = run(fp32, files, tmp_path / "b", loras=[{"path": LORA, "weight": 1.0}])
    _, half = run(fp32, files, tmp_path / "c", loras=[{"path": LORA, "weight": 0.5}])
    _, after = run(fp32, files, tmp_path / "d")

    assert [ref.path for ref in outputs.loras] == [LORA]
    assert inside_diff(adapted, baseline, files) > 0.5
    assert (half != adapted).any()  # the weight is applied
    assert (after == baseline).all()  # nothing leaked into the next job
    assert backend.denoiser.get_list_adapters() == {}
    assert backend.adapters.cached_paths == [str(flux_lora_path(backend))]


def flux_lora_path(backend: FluxFillInpainter) -> Path:
    assert backend.adapters.lora_dir is not None
    return backend.adapters.lora_dir / LORA


def test_inpaint_tiny_random_fluxfill_gguf_lora_applied_then_removed(
    gguf: InpaintPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    _, baseline = run(gguf, files, tmp_path / "a")
    _, adapted = run(gguf, files, tmp_path / "b", loras=[{"path": LORA}])
    _, after = run(gguf, files, tmp_path / "c")
    assert inside_diff(adapted, baseline, files) > 0.5
    assert (after == baseline).all()


def test_inpaint_tiny_random_fluxfill_fixed_lora_is_fused(
    flux: TinyFlux, fp32: InpaintPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    fixed = flux.load(fixed_lora=FixedLora(path=LORA, weight=1.0))
    backend = fixed.backend
    assert isinstance(backend, FluxFillInpainter)
    assert backend.denoiser.get_list_adapters() == {}  # fused into the weights, adapter unloaded

    _, fused = run(fixed, files, tmp_path / "a")
    _, per_job = run(fp32, files, tmp_path / "b", loras=[{"path": LORA}])
    _, baseline = run(fp32, files, tmp_path / "c")
    assert inside_diff(fused, per_job, files) < 0.1
    assert inside_diff(fused, baseline, files) > 0.5


def test_inpaint_tiny_random_fluxfill_fused_mode_needs_plain_weights(flux: TinyFlux) -> None:
    with pytest.raises(PermanentError, match="lora_mode 'fused' needs plain weights"):
        flux.load(transformer_gguf=str(flux.gguf), lora_mode="fused", fused_loras=[{"path": LORA}])


def test_inpaint_tiny_random_fluxfill_gguf_fixed_lora_stays_active_across_jobs(
    flux: TinyFlux, gguf: InpaintPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    fixed = flux.load(transformer_gguf=str(flux.gguf), fixed_lora=FixedLora(path=LORA, weight=1.0))
    _, with_fixed = run(fixed, files, tmp_path / "a")
    _, plus_job = run(fixed, files, tmp_path / "b", loras=[{"path": LORA, "weight": -1.0}])
    _, again = run(fixed, files, tmp_path / "c")
    _, baseline = run(gguf, files, tmp_path / "d")
    assert inside_diff(with_fixed, baseline, files) > 0.5
    assert inside_diff(plus_job, baseline, files) < 0.1  # +1 fixed and -1 per job cancel out
    assert (again == with_fixed).all()  # the fixed adapter is restored after the job's


def test_inpaint_tiny_random_fluxfill_progress_per_step_is_monotonic_and_ends_at_one(
    fp32: InpaintPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    progress = tiny.ProgressLog()
    run(fp32, files, tmp_path / "a", progress=progress, steps=4)
    assert progress.stages("denoising") == [0.25, 0.5, 0.75, 1.0]
    assert progress.fractions == sorted(progress.fractions) and progress.fractions[-1] == 1.0

    progress = tiny.ProgressLog()
    run(fp32, files, tmp_path / "b", progress=progress, steps=4, strength=0.5)
    assert progress.stages("denoising") == [0.5, 1.0]  # strength 0.5 runs half the steps


def test_inpaint_tiny_random_fluxfill_cancellation_through_progress_stops_the_run(
    fp32: InpaintPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    backend = fp32.backend
    assert isinstance(backend, FluxFillInpainter)
    _, baseline = run(fp32, files, tmp_path / "a")
    progress = tiny.ProgressLog(cancel_at=("denoising", 2))
    with pytest.raises(Cancelled):
        run(fp32, files, tmp_path / "b", progress=progress, steps=4, loras=[{"path": LORA}])
    assert progress.stages("denoising") == [0.25, 0.5]  # stopped at the second step
    assert not list((tmp_path / "b").iterdir())
    assert backend.denoiser.get_list_adapters() == {}  # the job's adapter went with it
    _, after = run(fp32, files, tmp_path / "c")
    assert (after == baseline).all()


def test_inpaint_tiny_random_fluxfill_caches_prompt_embeddings_and_text_encoders_on_cpu_match(
    flux: TinyFlux, fp32: InpaintPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    split = flux.load(text_encoder_device="cpu", prompt_cache_size=1)
    backend = split.backend
    assert isinstance(backend, FluxFillInpainter)
    assert backend.denoiser is not backend.pipe and backend.denoiser.text_encoder_2 is None

    first, out_split = run(split, files, tmp_path / "a", prompt="a red cat")
    second, _ = run(split, files, tmp_path / "b", prompt="a red cat")
    third, _ = run(split, files, tmp_path / "c", prompt="blue sky")
    fourth, _ = run(split, files, tmp_path / "d", prompt="a red cat")  # evicted by "blue sky"
    assert [o.prompt_cache_hit for o in (first, second, third, fourth)] == [False, True, False, False]

    _, out_single = run(fp32, files, tmp_path / "e", prompt="a red cat")
    assert (out_split == out_single).all()
    _, with_lora = run(split, files, tmp_path / "f", prompt="a red cat", loras=[{"path": LORA}])
    assert (with_lora != out_split).any() and backend.denoiser.get_list_adapters() == {}


def test_inpaint_tiny_random_fluxfill_adapter_with_text_encoder_layers_bypasses_the_prompt_cache(
    fp32: InpaintPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    backend = fp32.backend
    assert isinstance(backend, FluxFillInpainter)
    te_lora = "flux-te/pytorch_lora_weights.safetensors"
    warm, baseline = run(fp32, files, tmp_path / "a", prompt="the red bench")
    cached, _ = run(fp32, files, tmp_path / "b", prompt="the red bench")
    adapted, with_te = run(fp32, files, tmp_path / "c", prompt="the red bench", loras=[{"path": te_lora}])
    after, again = run(fp32, files, tmp_path / "d", prompt="the red bench")
    assert [o.prompt_cache_hit for o in (warm, cached, adapted, after)] == [False, True, False, True]
    assert backend.pipe.get_list_adapters() == {}
    assert (with_te != baseline).any() and (again == baseline).all()


def test_inpaint_tiny_random_fluxfill_large_input_runs_downscaled_and_is_restored(
    flux: TinyFlux, tmp_path: Path
) -> None:
    small_budget = flux.load(max_work_pixels=64 * 48)
    _clean, marked, mask = make_sample(160, 120)
    marked.save(tmp_path / "image.png")
    mask.save(tmp_path / "mask.png")
    files = {"image": tmp_path / "image.png", "mask": tmp_path / "mask.png"}
    outputs, out = run(small_budget, files, tmp_path / "work")
    image, inside = original(files)
    assert (outputs.work_width, outputs.work_height) == (64, 48)
    assert out.shape == (120, 160, 3) and (out[~inside] == image[~inside]).all()


def test_inpaint_tiny_random_fluxfill_adapter_errors_are_invalid_input(
    flux: TinyFlux, fp32: InpaintPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    progress = tiny.ProgressLog()
    with pytest.raises(InvalidInput, match="not found in the adapter directory"):
        run(fp32, files, tmp_path / "a", progress=progress, loras=[{"path": "missing.safetensors"}])
    assert "encoding prompt" not in {s for _, s in progress.calls}  # rejected before model work
    no_dir = flux.load(lora_dir=None)
    with pytest.raises(InvalidInput, match="no adapter directory"):
        run(no_dir, files, tmp_path / "b", loras=[{"path": LORA}])


def test_inpaint_tiny_random_fluxfill_missing_weights_are_a_permanent_error(
    flux: TinyFlux, tmp_path: Path
) -> None:
    with pytest.raises(PermanentError, match=r"needs config\.model_dir"):
        flux.load(model_dir=None)
    with pytest.raises(PermanentError, match=r"cannot load FLUX\.1 Fill"):
        flux.load(model_dir=str(tmp_path / "nowhere"))
    with pytest.raises(PermanentError, match="fixed_lora"):
        flux.load(fixed_lora=FixedLora(path="missing.safetensors"))
