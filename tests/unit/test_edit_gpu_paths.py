"""The edit pipeline's paths that broke on a first GPU, checked on the CPU:

- Qwen-Image-Edit-Plus refuses batches above one: its jobs run one call each, each as alone;
- Qwen-Image-Edit batched gave its vision-language encoder the work-size images where a job alone
  gets the ~1 MP resize: each job's condition image is now resized as alone;
- a Qwen-Image-Edit that an L4 service cannot hold is refused at load from its file headers, with
  the numbers, before any weight is read; with a quantized transformer it fits (text encoder
  streamed).
"""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.errors import PermanentError
from core.spec import RunContext, RunResult
from devkit import tiny_diffusers as tiny
from devkit.sample_images import make_sample
from pipelines.edit import SPEC, EditConfig
from pipelines.edit.pipeline import FAMILIES, EditPipeline, _plan, _qwen_condition
from pipelines.imaging.memory import MEMORY_SHORT, GpuBudget, lend
from pipelines.imaging.weights import check_host_memory, component_sizes_on_disk

GB = 10**9
GiB = 2**30

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- Qwen-Image-Edit-Plus: no batches ------------------------------------------------------------


@pytest.fixture(scope="module")
def editor(tmp_path_factory: pytest.TempPathFactory) -> EditPipeline:
    model_dir = tiny.build_tiny_instruct_pix2pix(tmp_path_factory.mktemp("tiny") / "tiny-ip2p")
    pipeline = SPEC.load(EditConfig.model_validate({"model_dir": str(model_dir), "device": "cpu"}))
    assert isinstance(pipeline, EditPipeline)
    return pipeline


class _OneAtATime:
    """The tiny pipeline behind the call contract of ``QwenImageEditPlusPipeline``: any batch above
    one is a ``ValueError`` (diffusers 0.42.1, ``pipeline_qwenimage_edit_plus.py``)."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        if isinstance(kwargs.get("prompt"), list) and len(kwargs["prompt"]) > 1:
            raise ValueError("QwenImageEditPlusPipeline currently only supports batch_size=1")
        return self._pipe(**kwargs)


def test_a_family_that_cannot_batch_runs_a_batch_one_call_per_job_each_as_alone(
    editor: EditPipeline, tmp_path: Path
) -> None:
    assert FAMILIES["QwenImageEditPlusPipeline"].batches is False
    _clean, marked, _mask = make_sample(64, 48)
    marked.save(tmp_path / "p.png")
    plus = _OneAtATime(editor.pipe)
    one_by_one = EditPipeline(
        editor.config,
        plus,
        replace(editor.family, batches=False),
        editor.device,
        editor.strategy,
        editor.adapters,
    )

    def job(name: str, seed: int) -> tuple[dict[str, Any], RunContext]:
        (tmp_path / name).mkdir()
        inputs = {
            "image": "gs://bucket/u/p.png",
            "instruction": f"make it blue {seed}",
            "steps": 2,
            "seed": seed,
        }
        return inputs, RunContext(name, tmp_path / name, {"image": tmp_path / "p.png"})

    alone = [editor.run(editor.validate(i), c) for i, c in (job(f"a{s}", s) for s in (1, 2, 3))]
    batched = one_by_one.run_batch([job(f"b{s}", s) for s in (1, 2, 3)])
    assert plus.calls == 3
    for one, many in zip(alone, batched, strict=True):
        assert isinstance(many, RunResult), many
        assert many.outputs.timings["batch_size"] == 1
        with (
            Image.open(one.files[one.outputs.result_file]) as a,
            Image.open(many.files[many.outputs.result_file]) as b,
        ):
            assert np.array_equal(np.asarray(a), np.asarray(b))


# -- Qwen-Image-Edit: the encoder's image in a batch ------------------------------------------------


def test_each_batched_qwen_job_gives_the_encoder_the_image_it_gets_alone() -> None:
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=8)
    pipe = SimpleNamespace(image_processor=processor)
    images = [make_sample(512, 384)[1], make_sample(512, 384)[0]]
    # What the call does: one image is resized to ~1 MP; a list is returned as it came.
    alone = [processor.resize(image, 896, 1184) for image in images]
    assert alone[0].size == (1184, 896)
    assert processor.resize(images, 896, 1184) == images
    conditioned = _qwen_condition(pipe, images)
    for mine, theirs in zip(conditioned, alone, strict=True):
        assert mine.size == theirs.size
        assert np.array_equal(np.asarray(mine), np.asarray(theirs))
    assert FAMILIES["QwenImageEditPipeline"].condition is _qwen_condition


# -- Qwen-Image-Edit on an L4 ---------------------------------------------------------------------


def _safetensors_header(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file with only its header (shapes and dtypes): what the size check reads."""
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


@pytest.fixture
def qwen_edit_dir(tmp_path: Path) -> Path:
    """A Qwen-Image-Edit directory whose headers give the real sizes: a 20.4 B transformer, the 8.3 B
    Qwen2.5-VL text encoder and the VAE, in bf16."""
    root = tmp_path / "Qwen-Image-Edit"
    root.mkdir()
    index = {
        "_class_name": "QwenImageEditPipeline",
        "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    }
    (root / "model_index.json").write_text(json.dumps(index))
    for shard in range(4):
        _safetensors_header(
            root / "transformer" / f"diffusion_pytorch_model-0000{shard}.safetensors",
            {f"blocks.{shard}.weight": ("BF16", [5_100_000, 1000])},
        )
    _safetensors_header(root / "text_encoder" / "model.safetensors", {"w": ("BF16", [8_290_000, 1000])})
    _safetensors_header(root / "vae" / "diffusion_pytorch_model.safetensors", {"w": ("F32", [127_000, 1000])})
    return root


def test_qwen_edit_in_bf16_is_refused_on_an_l4_at_load_with_the_numbers(qwen_edit_dir: Path) -> None:
    config = EditConfig(model_dir=str(qwen_edit_dir), device="cuda")
    with lend(GpuBudget(22 * GB), "edit"), pytest.raises(PermanentError) as exc:
        SPEC.load(config)  # the headers hold no weights: a load that got past the check would fail otherwise
    message = str(exc.value)
    assert exc.value.code == MEMORY_SHORT
    assert (
        "edit does not fit" in message and "largest component 40.8 GB" in message and "has 22.0 GB" in message
    )


def test_qwen_edit_in_bf16_is_refused_when_host_memory_cannot_hold_it(qwen_edit_dir: Path) -> None:
    sizes = component_sizes_on_disk(str(qwen_edit_dir), 2, replaced={})
    assert round(sum(sizes.values()) / GB, 1) == 57.6  # 40.8 + 16.6 + 0.25 (VAE cast to bf16)
    with pytest.raises(PermanentError) as exc:
        check_host_memory("edit", sizes, 32 * GiB)
    assert "57.6 GB" in str(exc.value) and "34.4 GB is available" in str(exc.value)


def test_qwen_edit_with_a_quantized_transformer_fits_an_l4_with_its_text_encoder_streamed(
    qwen_edit_dir: Path, tmp_path: Path
) -> None:
    gguf = tmp_path / "qwen-image-edit-Q4_K_M.gguf"
    with gguf.open("wb") as f:  # sparse: only its size is read
        f.truncate(int(13.1 * GB))
    config = EditConfig(model_dir=str(qwen_edit_dir), device="cuda", transformer_gguf=str(gguf))
    sizes = component_sizes_on_disk(str(qwen_edit_dir), 2, replaced={"transformer": gguf})
    check_host_memory("edit", sizes, 32 * GiB)  # 13.1 + 16.6 + 0.25 GB: loads
    with lend(GpuBudget(22 * GB), "edit"):
        strategy, streamed = _plan(config, "cuda", sizes, quantized=True)
    assert strategy.placement == "gpu" and streamed == ("text_encoder",)
    assert strategy.resident_bytes < 14 * GB


# -- a real (tiny) Qwen-Image-Edit, batched and alone ----------------------------------------------


def qwen_batched_and_alone(model_dir: Path, tmp: Path, device: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three jobs (other seeds and instructions, one size) alone, then in one ``run_batch``: the
    pixels of each job both ways. Shared with the GPU test."""
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    editor = SPEC.load(
        EditConfig.model_validate({"model_dir": str(model_dir), "device": device, "dtype": dtype})
    )
    assert isinstance(editor, EditPipeline)
    _clean, marked, _mask = make_sample(96, 64)
    marked.save(tmp / "p.png")

    def job(name: str, seed: int) -> tuple[dict[str, Any], RunContext]:
        (tmp / name).mkdir()
        inputs = {
            "image": "gs://bucket/u/p.png",
            "instruction": f"make it blue {seed}",
            "steps": 2,
            "seed": seed,
        }
        return inputs, RunContext(name, tmp / name, {"image": tmp / "p.png"})

    def pixels(result: Any) -> np.ndarray:
        assert isinstance(result, RunResult), result
        with Image.open(result.files[result.outputs.result_file]) as image:
            return np.asarray(image.convert("RGB"))

    alone = [pixels(editor.run(editor.validate(i), c)) for i, c in (job(f"a{s}", s) for s in (1, 2, 3))]
    batched = [pixels(r) for r in editor.run_batch([job(f"b{s}", s) for s in (1, 2, 3)])]
    return list(zip(alone, batched, strict=True))


@pytest.mark.slow  # the pipeline VAE-encodes every input at ~1 MP: minutes on 2 CPU cores
@pytest.mark.parametrize("plus", [False, True], ids=["QwenImageEdit", "QwenImageEditPlus"])
def test_tiny_qwen_image_edit_batched_gives_each_job_its_image_alone(tmp_path: Path, plus: bool) -> None:
    pytest.importorskip("torchvision", reason="the Qwen2-VL image processor needs torchvision")
    model = tiny.build_tiny_qwen_image_edit(tmp_path / "qwen", plus=plus)
    pairs = qwen_batched_and_alone(model, tmp_path, "cpu")
    for alone, batched in pairs:
        assert alone.shape == batched.shape == (64, 96, 3)
        # Exact: measured 0 differing values with each job's encoder image resized as alone; with the
        # work-size images (the call's own list resize) 0.6-0.7 % of the values moved, even on
        # random weights.
        assert np.array_equal(alone, batched)
    assert not np.array_equal(pairs[0][0], pairs[1][0])  # seeds still decide
