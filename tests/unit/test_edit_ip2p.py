"""The ``edit`` pipeline on a tiny random-weight StableDiffusionInstructPix2PixPipeline (CPU, 2-4 steps).

InstructPix2Pix stands in for Qwen-Image-Edit: same diffusers loading and call machinery, a
different row in ``pipelines.edit.pipeline.FAMILIES``. Random weights give noise, so the tests
check sizes, formats, seeds, adapters in and out, progress, cancellation and the memory choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.errors import Cancelled, InvalidInput, PermanentError
from core.spec import RunContext
from devkit import tiny_diffusers as tiny  # sets HF_HUB_OFFLINE before diffusers loads
from devkit.sample_images import make_sample
from pipelines.edit import SPEC, EditConfig, EditInputs, EditOutputs
from pipelines.edit.pipeline import FAMILIES, EditPipeline
from pipelines.imaging.fields import FixedLora

URI = "gs://bucket/in/photo.png"
LORA = "sd/pytorch_lora_weights.safetensors"
FLUX_LORA = "flux/pytorch_lora_weights.safetensors"


@dataclass
class TinyIP2P:
    model_dir: Path
    lora_dir: Path
    flux_dir: Path

    def load(self, **overrides: Any) -> EditPipeline:
        base: dict[str, Any] = {
            "model_dir": str(self.model_dir),
            "device": "cpu",
            "lora_dir": str(self.lora_dir),
        }
        pipeline = SPEC.load(EditConfig.model_validate({**base, **overrides}))
        assert isinstance(pipeline, EditPipeline)
        return pipeline


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ip2p(tmp_path_factory: pytest.TempPathFactory) -> TinyIP2P:
    root = tmp_path_factory.mktemp("tiny-ip2p")
    model_dir = tiny.build_tiny_instruct_pix2pix(root / "tiny-ip2p")
    tiny.write_tiny_lora(model_dir, root / "loras" / "sd", kind="sd")
    flux_dir = tiny.build_tiny_fluxfill(root / "tiny-flux-fill")  # another model's adapter, and class
    tiny.write_tiny_lora(flux_dir, root / "loras" / "flux", kind="flux")
    return TinyIP2P(model_dir, root / "loras", flux_dir)


@pytest.fixture(scope="module")
def editor(ip2p: TinyIP2P) -> EditPipeline:
    return ip2p.load()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    _clean, marked, _mask = make_sample(100, 75)  # not a multiple of 8
    marked.save(root / "photo.png")
    return {"image": root / "photo.png"}


def run(
    pipeline: EditPipeline,
    files: dict[str, Path],
    workdir: Path,
    progress: tiny.ProgressLog | None = None,
    **inputs: Any,
) -> tuple[EditOutputs, np.ndarray]:
    job = {"image": URI, "instruction": "make it snow", "steps": 2, "seed": 7, **inputs}
    result, pixels = tiny.run_job(pipeline, EditInputs, job, files, workdir, progress)
    assert list(result.files) == [result.outputs.result_file]
    return result.outputs, pixels


def test_edit_tiny_random_instruct_pix2pix_result_has_the_input_size_and_format(
    editor: EditPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    outputs, out = run(editor, files, tmp_path / "png")
    assert out.shape == (75, 100, 3)
    assert outputs.result_file == "result.png" and outputs.format == "png"
    assert (outputs.work_width, outputs.work_height) == (104, 72)  # multiples of 8, then restored
    assert outputs.backend == "StableDiffusionInstructPix2PixPipeline"
    assert (outputs.guidance, outputs.image_guidance) == (7.5, 1.5)  # the family's defaults
    assert outputs.memory_strategy == "cpu" and outputs.peak_gpu_memory_bytes is None

    jpeg = tmp_path / "photo.jpg"
    Image.open(files["image"]).save(jpeg, format="JPEG")
    outputs, _ = run(editor, {"image": jpeg}, tmp_path / "jpg")
    assert outputs.result_file == "result.jpg"
    with Image.open(tmp_path / "jpg" / "result.jpg") as written:
        assert written.format == "JPEG" and written.size == (100, 75)


def test_edit_tiny_random_instruct_pix2pix_same_seed_same_result_other_seed_differs(
    editor: EditPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    _, first = run(editor, files, tmp_path / "a", seed=5)
    _, again = run(editor, files, tmp_path / "b", seed=5)
    _, other = run(editor, files, tmp_path / "c", seed=6)
    assert (first == again).all()
    assert (first != other).any()


def test_edit_tiny_random_instruct_pix2pix_lora_applied_then_removed(
    editor: EditPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    _, baseline = run(editor, files, tmp_path / "a")
    outputs, adapted = run(editor, files, tmp_path / "b", loras=[{"path": LORA, "weight": 1.0}])
    _, after = run(editor, files, tmp_path / "c")
    assert [ref.path for ref in outputs.loras] == [LORA]
    assert np.abs(adapted - baseline).mean() > 0.5
    assert (after == baseline).all()
    assert editor.pipe.get_list_adapters() == {}


def test_edit_tiny_random_instruct_pix2pix_fixed_lora_is_fused(
    ip2p: TinyIP2P, editor: EditPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    fixed = ip2p.load(fixed_lora=FixedLora(path=LORA))
    assert fixed.pipe.get_list_adapters() == {}
    _, fused = run(fixed, files, tmp_path / "a")
    _, per_job = run(editor, files, tmp_path / "b", loras=[{"path": LORA}])
    assert np.abs(fused - per_job).mean() < 0.1


def test_edit_tiny_random_instruct_pix2pix_fused_mode_merges_a_set_and_refuses_others(
    ip2p: TinyIP2P, editor: EditPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    config = {"lora_mode": "fused", "fused_loras": [{"path": LORA, "weight": 0.8}]}
    fused = ip2p.load(**config)
    assert fused.pipe.get_list_adapters() == {}  # merged into the weights, adapters unloaded
    _, merged = run(fused, files, tmp_path / "a")
    _, per_job = run(editor, files, tmp_path / "b", loras=[{"path": LORA, "weight": 0.8}])
    _, baseline = run(editor, files, tmp_path / "c")
    assert np.abs(merged - per_job).mean() < 0.1
    assert np.abs(merged - baseline).mean() > 0.5
    inputs = EditInputs.model_validate(
        {"image": URI, "instruction": "make it snow", "loras": [{"path": FLUX_LORA}]}
    )
    with pytest.raises(InvalidInput, match="cannot be applied: this service runs with a fixed set") as caught:
        SPEC.run_precheck(inputs, EditConfig.model_validate(config))  # in the functions
    assert caught.value.code == "lora_unavailable"
    with pytest.raises(InvalidInput, match="cannot be applied"):  # and in the service
        fused.run(inputs, RunContext(job_id="job", workdir=tmp_path / "d", files=files))


def test_edit_tiny_random_instruct_pix2pix_rejects_another_models_adapter(
    editor: EditPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    _, baseline = run(editor, files, tmp_path / "a")
    with pytest.raises(InvalidInput, match=r"flux/pytorch_lora_weights\.safetensors"):
        run(editor, files, tmp_path / "b", loras=[{"path": FLUX_LORA}])
    assert editor.pipe.get_list_adapters() == {}
    _, after = run(editor, files, tmp_path / "c")
    assert (after == baseline).all()


def test_edit_tiny_random_instruct_pix2pix_progress_per_step_and_cancellation(
    editor: EditPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    progress = tiny.ProgressLog()
    run(editor, files, tmp_path / "a", progress=progress, steps=4)
    assert progress.stages("denoising") == [0.25, 0.5, 0.75, 1.0]
    assert progress.fractions == sorted(progress.fractions) and progress.fractions[-1] == 1.0

    cancelling = tiny.ProgressLog(cancel_at=("denoising", 1))
    with pytest.raises(Cancelled):
        run(editor, files, tmp_path / "b", progress=cancelling, steps=4, loras=[{"path": LORA}])
    assert cancelling.stages("denoising") == [0.25]
    assert not list((tmp_path / "b").iterdir())
    assert editor.pipe.get_list_adapters() == {}


def test_edit_tiny_random_instruct_pix2pix_checks_inputs_before_model_work(
    editor: EditPipeline, files: dict[str, Path], tmp_path: Path
) -> None:
    not_image = tmp_path / "photo.png"
    not_image.write_bytes(b"%PDF-1.4")
    progress = tiny.ProgressLog()
    with pytest.raises(InvalidInput, match="not an image"):
        run(editor, {"image": not_image}, tmp_path / "a", progress=progress)
    with pytest.raises(InvalidInput, match="not found in the adapter directory"):
        run(editor, files, tmp_path / "b", progress=progress, loras=[{"path": "nope.safetensors"}])
    assert {s for _, s in progress.calls} == {"checking inputs"}
    with pytest.raises(InvalidInput, match="instruction"):
        editor.run({"image": URI, "instruction": ""}, RunContext("j", tmp_path, files))  # type: ignore[arg-type]


def test_edit_loader_refuses_missing_weights_and_unsupported_pipelines(
    ip2p: TinyIP2P, tmp_path: Path
) -> None:
    with pytest.raises(PermanentError, match=r"needs config\.model_dir"):
        SPEC.load(EditConfig())
    with pytest.raises(PermanentError, match="cannot load an edit model"):
        ip2p.load(model_dir=str(tmp_path / "nowhere"))
    with pytest.raises(PermanentError, match=r"FluxFillPipeline .* is not an instruction-editing pipeline"):
        ip2p.load(model_dir=str(ip2p.flux_dir))
    assert "QwenImageEditPipeline" in FAMILIES and FAMILIES["QwenImageEditPipeline"].patchified
