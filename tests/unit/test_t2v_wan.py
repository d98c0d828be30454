"""The ``t2v`` pipeline on a tiny random-weight WanPipeline the tests build and save (CPU).

Loaded through the production loader (``SPEC.load``), so the real directory checks, the fp32 VAE,
the adapter modes, the memory plan, the step callback and the ffmpeg encode all run. Random weights
give noise: the tests check frame counts, sizes, rates, seeds, adapters in and out, progress and
cancellation, never what the video shows.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from core.errors import Cancelled, InvalidInput, PermanentError
from core.spec import RunContext, RunResult
from devkit import tiny_diffusers as tiny  # sets HF_HUB_OFFLINE before diffusers loads
from pipelines.imaging.fields import FixedLora
from pipelines.t2v import SPEC, T2VConfig, T2VInputs, T2VOutputs
from pipelines.t2v.pipeline import T2VPipeline

LORA_A = "wan/a/pytorch_lora_weights.safetensors"
LORA_B = "wan/b/pytorch_lora_weights.safetensors"
LORA_A_ALPHA_8 = "wan/a8/pytorch_lora_weights.safetensors"  # A's matrices; header: rank 4, alpha 8
JOB: dict[str, Any] = {
    "prompt": "a red cat",
    "num_frames": 9,
    "fps": 8,
    "width": 48,
    "height": 32,
    "steps": 3,
    "seed": 7,
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class TinyWan:
    model_dir: Path
    lora_dir: Path

    def load(self, **overrides: Any) -> T2VPipeline:
        base = {"model_dir": str(self.model_dir), "device": "cpu", "lora_dir": str(self.lora_dir)}
        pipeline = SPEC.load(T2VConfig.model_validate({**base, **overrides}))
        assert isinstance(pipeline, T2VPipeline)
        return pipeline


@pytest.fixture(scope="module")
def wan(tmp_path_factory: pytest.TempPathFactory) -> TinyWan:
    root = tmp_path_factory.mktemp("tiny-wan")
    model_dir = tiny.build_tiny_wan(root / "tiny-wan")
    tiny.write_tiny_lora(model_dir, root / "loras" / "wan" / "a", kind="wan", seed=1)
    tiny.write_tiny_lora(model_dir, root / "loras" / "wan" / "b", kind="wan", seed=2)
    tiny.write_tiny_lora(model_dir, root / "loras" / "wan" / "a8", kind="wan", seed=1, alpha=8)
    return TinyWan(model_dir, root / "loras")


@pytest.fixture(scope="module")
def t2v(wan: TinyWan) -> T2VPipeline:
    return wan.load()


def run(
    pipeline: T2VPipeline, workdir: Path, progress: tiny.ProgressLog | None = None, **inputs: Any
) -> RunResult[T2VOutputs]:
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(job_id="job", workdir=workdir, progress=progress or tiny.ProgressLog())
    result = pipeline.run(T2VInputs.model_validate({**JOB, **inputs}), ctx)
    assert isinstance(result.outputs, T2VOutputs)
    return result


def probe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,pix_fmt,width,height,r_frame_rate,nb_read_frames", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    stream: dict[str, Any] = json.loads(out.stdout)["streams"][0]
    return stream


def frames(path: Path) -> np.ndarray:
    """The decoded frames of an MP4, as RGB bytes."""
    info = probe(path)
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, info["height"], info["width"], 3)


def video(result: RunResult[T2VOutputs]) -> np.ndarray:
    """The job's decoded video (int16, to subtract)."""
    return frames(result.files[result.outputs.video_file]).astype(np.int16)


def transformer_weights(pipeline: T2VPipeline) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pipeline.pipe.transformer.state_dict().items()}


def test_t2v_tiny_random_wan_mp4_has_the_frames_size_and_rate_asked_for(
    t2v: T2VPipeline, tmp_path: Path
) -> None:
    result = run(t2v, tmp_path)
    out = result.outputs
    assert set(result.files) == {"video.mp4", "poster.png"}
    assert result.uri_fields == {"video": "video.mp4", "poster": "poster.png"}
    stream = probe(result.files["video.mp4"])
    assert stream["codec_name"] == "h264" and stream["pix_fmt"] == "yuv420p"
    assert (stream["width"], stream["height"]) == (48, 32)
    assert int(stream["nb_read_frames"]) == 9
    assert stream["r_frame_rate"] == "8/1"
    assert (out.num_frames, out.fps, out.duration_seconds) == (9, 8, 1.125)
    with Image.open(result.files["poster.png"]) as image:
        assert image.format == "PNG" and image.size == (48, 32)
    assert out.backend == "WanPipeline" and out.memory_strategy == "cpu" and out.peak_gpu_memory_bytes is None
    assert out.lora_mode == "runtime" and out.seed == 7


def test_t2v_tiny_random_wan_one_frame_and_another_size(t2v: T2VPipeline, tmp_path: Path) -> None:
    result = run(t2v, tmp_path, num_frames=1, width=32, height=64, fps=24)
    stream = probe(result.files["video.mp4"])
    assert (stream["width"], stream["height"], int(stream["nb_read_frames"])) == (32, 64, 1)
    assert stream["r_frame_rate"] == "24/1"


def test_t2v_tiny_random_wan_same_seed_same_video_other_seed_differs(
    t2v: T2VPipeline, tmp_path: Path
) -> None:
    first = frames(run(t2v, tmp_path / "a").files["video.mp4"])
    again = frames(run(t2v, tmp_path / "b").files["video.mp4"])
    other = frames(run(t2v, tmp_path / "c", seed=8).files["video.mp4"])
    assert first.shape == (9, 32, 48, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_t2v_tiny_random_wan_picks_and_reports_a_seed_when_absent(t2v: T2VPipeline, tmp_path: Path) -> None:
    result = run(t2v, tmp_path, seed=None)
    again = run(t2v, tmp_path / "again", seed=result.outputs.seed)
    assert np.array_equal(video(result), video(again))


def test_t2v_tiny_random_wan_reports_progress_after_every_step(t2v: T2VPipeline, tmp_path: Path) -> None:
    progress = tiny.ProgressLog()
    run(t2v, tmp_path, progress, steps=4)
    assert progress.stages("denoising") == [0.25, 0.5, 0.75, 1.0]
    assert [s for _, s in progress.calls] == ["checking inputs", *["denoising"] * 4, "encoding video"]


def test_t2v_tiny_random_wan_cancel_mid_run_stops_between_steps(t2v: T2VPipeline, tmp_path: Path) -> None:
    progress = tiny.ProgressLog(cancel_at=("denoising", 2))
    with pytest.raises(Cancelled):
        run(t2v, tmp_path / "cancelled", progress, steps=5)
    assert progress.stages("denoising") == [0.2, 0.4]  # no step ran after the cancel
    assert not list((tmp_path / "cancelled").iterdir())  # nothing encoded
    # The model is left as it was: the next job is the same as before the cancel.
    before = video(run(t2v, tmp_path / "before"))
    assert np.array_equal(before, video(run(t2v, tmp_path / "after")))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_frames": 8}, "4k+1 frames"),
        ({"num_frames": 0}, "greater than or equal to 1"),
        ({"num_frames": 261}, "less than or equal to 257"),
        ({"width": 50}, "not a multiple of 16: use 48 or 64"),
        ({"height": 8}, "greater than or equal to 16"),
        ({"height": 2000}, "less than or equal to 1280"),
        ({"fps": 0}, "greater than or equal to 1"),
        ({"fps": 120}, "less than or equal to 60"),
        ({"steps": 0}, "greater than or equal to 1"),
        ({"steps": 500}, "less than or equal to 100"),
        ({"guidance": -1}, "greater than or equal to 0"),
        ({"seed": -1}, "greater than or equal to 0"),
        ({"prompt": ""}, "at least 1 character"),
        ({"prompt": "x" * 2001}, "at most 2000 characters"),
        ({"negative_prompt": 5}, "valid string"),
        ({"frames": 9}, "Extra inputs are not permitted"),
        ({"loras": [{"path": "../other/x.safetensors"}]}, "without '..'"),
        ({"loras": [{"path": "/etc/passwd.safetensors"}]}, "must be relative"),
        ({"loras": [{"path": "gs://b/x.safetensors"}]}, "URIs are not accepted"),
    ],
)
def test_t2v_bad_inputs_are_rejected_with_a_clear_message(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        T2VInputs.model_validate({**JOB, **change})


def test_t2v_tiny_random_wan_bad_inputs_in_the_service_are_invalid_input(
    t2v: T2VPipeline, tmp_path: Path
) -> None:
    ctx = RunContext(job_id="job", workdir=tmp_path)
    with pytest.raises(InvalidInput, match="4k\\+1 frames"):
        t2v.run({**JOB, "num_frames": 10}, ctx)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_frames": 85}, "frames is 85, over this service's cap of 81 \\(max_frames\\)"),
        (
            {"width": 1280, "height": 720},
            "921,600 pixels, over this service's cap of 399,360 pixels \\(max_pixels\\)",
        ),
    ],
)
def test_t2v_operator_limits_reject_in_the_functions_and_in_the_service(
    t2v: T2VPipeline, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    inputs = T2VInputs.model_validate({**JOB, **change})
    with pytest.raises(InvalidInput, match=message) as caught:
        SPEC.run_precheck(inputs, T2VConfig())
    assert caught.value.code == "invalid_inputs"
    with pytest.raises(InvalidInput, match=message):
        t2v.run(inputs, RunContext(job_id="job", workdir=tmp_path))


def test_t2v_loader_refuses_missing_or_foreign_weights(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=r"needs config\.model_dir"):
        SPEC.load(T2VConfig(device="cpu"))
    with pytest.raises(PermanentError, match="is model_dir a diffusers directory"):
        SPEC.load(T2VConfig(model_dir=str(tmp_path), device="cpu"))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxFillPipeline"}))
    with pytest.raises(PermanentError, match="holds a FluxFillPipeline, not a WanPipeline"):
        SPEC.load(T2VConfig(model_dir=str(tmp_path), device="cpu"))


# -- LoRA: runtime mode ------------------------------------------------------------------------------


def test_t2v_tiny_random_wan_runtime_lora_applied_then_removed_exactly(
    t2v: T2VPipeline, tmp_path: Path
) -> None:
    baseline = video(run(t2v, tmp_path / "base"))
    styled = run(t2v, tmp_path / "lora", loras=[{"path": LORA_A, "weight": 1.0}])
    assert np.abs(video(styled) - baseline).max() > 10
    assert [ref.path for ref in styled.outputs.loras] == [LORA_A]
    assert np.array_equal(video(run(t2v, tmp_path / "after")), baseline)  # exactly back
    assert t2v.pipe.get_list_adapters() in ({}, {"transformer": []})


def test_t2v_tiny_random_wan_runtime_several_adapters_with_weights(t2v: T2VPipeline, tmp_path: Path) -> None:
    baseline = video(run(t2v, tmp_path / "base"))
    only_a = video(run(t2v, tmp_path / "a", loras=[{"path": LORA_A}]))
    both = video(run(t2v, tmp_path / "ab", loras=[{"path": LORA_A}, {"path": LORA_B, "weight": 1.0}]))
    both_half = video(run(t2v, tmp_path / "ab5", loras=[{"path": LORA_A}, {"path": LORA_B, "weight": 0.5}]))
    assert not np.array_equal(both, only_a)  # the second adapter counts
    assert not np.array_equal(both, both_half)  # and so does its weight
    assert np.array_equal(video(run(t2v, tmp_path / "after")), baseline)


def test_t2v_tiny_random_wan_adapter_strength_follows_the_alpha_in_its_header(
    t2v: T2VPipeline, tmp_path: Path
) -> None:
    # alpha 8 at rank 4 is a scale of 2: the same matrices without a header (scale 1) at weight 2.
    with_header = video(run(t2v, tmp_path / "a8", loras=[{"path": LORA_A_ALPHA_8, "weight": 1.0}]))
    doubled = video(run(t2v, tmp_path / "a2", loras=[{"path": LORA_A, "weight": 2.0}]))
    plain = video(run(t2v, tmp_path / "a1", loras=[{"path": LORA_A, "weight": 1.0}]))
    assert np.abs(with_header - doubled).max() <= 2
    assert np.abs(with_header - plain).max() > 10


def test_t2v_tiny_random_wan_adapter_paths_cannot_leave_the_adapter_directory(
    wan: TinyWan, t2v: T2VPipeline, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((wan.lora_dir / LORA_A).read_bytes())
    link = wan.lora_dir / "escape.safetensors"
    link.symlink_to(outside)
    try:
        with pytest.raises(
            InvalidInput, match=re.escape("'escape.safetensors' was not found in the adapter directory")
        ):
            run(t2v, tmp_path / "job", loras=[{"path": "escape.safetensors"}])
    finally:
        link.unlink()
    with pytest.raises(InvalidInput, match="was not found"):
        run(t2v, tmp_path / "job", loras=[{"path": "missing.safetensors"}])


# -- LoRA: fused mode ----------------------------------------------------------------------------------


def test_t2v_tiny_random_wan_fused_mode_changes_the_weights_once(
    wan: TinyWan, t2v: T2VPipeline, tmp_path: Path
) -> None:
    adapters = [{"path": LORA_A, "weight": 0.7}, {"path": LORA_B, "weight": 0.5}]
    fused = wan.load(lora_mode="fused", fused_loras=adapters)
    base_weights = transformer_weights(wan.load())
    merged = transformer_weights(fused)
    assert merged.keys() == base_weights.keys()  # merged in place: no adapter layers left
    changed = [k for k in merged if not torch.equal(merged[k], base_weights[k])]
    assert changed and all(".attn" in k for k in changed)
    assert fused.pipe.get_list_adapters() in ({}, {"transformer": []})

    first = run(fused, tmp_path / "one")
    second = run(fused, tmp_path / "two", loras=[adapters[0]])  # already merged: accepted, a no-op
    assert np.array_equal(video(first), video(second))
    for key, value in transformer_weights(fused).items():
        assert torch.equal(value, merged[key]), key  # jobs never touch the merged weights
    assert first.outputs.lora_mode == "fused"
    # The same adapters at the same weights applied at run time give the same video (up to rounding).
    runtime = run(t2v, tmp_path / "runtime", loras=adapters)
    assert np.abs(video(runtime) - video(first)).max() <= 2
    assert np.abs(video(runtime) - video(run(t2v, tmp_path / "plain"))).max() > 10


def test_t2v_tiny_random_wan_fused_mode_rejects_other_adapters(wan: TinyWan, tmp_path: Path) -> None:
    config = {"lora_mode": "fused", "fused_loras": [{"path": LORA_A, "weight": 0.7}]}
    fused = wan.load(**config)
    for loras, message in (
        ([{"path": LORA_B}], f"adapter '{LORA_B}' cannot be applied: this service runs with a fixed set"),
        (
            [{"path": LORA_A, "weight": 1.0}],
            "merged into the model at weight 0.7; this service cannot run it at 1",
        ),
    ):
        inputs = T2VInputs.model_validate({**JOB, "loras": loras})
        with pytest.raises(InvalidInput, match=re.escape(message)) as caught:
            SPEC.run_precheck(inputs, T2VConfig.model_validate(config))  # in the functions
        assert caught.value.code == "lora_unavailable"
        with pytest.raises(InvalidInput, match=re.escape(message)):  # and in the service
            fused.run(inputs, RunContext(job_id="job", workdir=tmp_path))


def test_t2v_fused_mode_settings_from_the_environment(wan: TinyWan) -> None:
    config = T2VConfig.model_validate(
        {"lora_mode": "fused", "fused_loras": json.dumps([{"path": LORA_A, "weight": 0.5}])}
    )
    assert config.fused_loras == [FixedLora(path=LORA_A, weight=0.5)]
    with pytest.raises(ValidationError, match="only used with lora_mode 'fused'"):
        T2VConfig.model_validate({"fused_loras": [{"path": LORA_A}]})
    with pytest.raises(ValidationError, match="not a JSON list"):
        T2VConfig.model_validate({"lora_mode": "fused", "fused_loras": "[{"})
    with pytest.raises(PermanentError, match=r"fused_loras .* does not exist"):
        wan.load(lora_mode="fused", fused_loras=[{"path": "missing.safetensors"}])


def test_t2v_encoder_failure_is_a_permanent_error(tmp_path: Path) -> None:
    from pipelines.t2v.encode import write_mp4

    odd = np.zeros((1, 15, 15, 3), np.uint8)  # yuv420p needs even sides: ffmpeg refuses
    with pytest.raises(PermanentError, match="ffmpeg could not encode the video"):
        write_mp4(odd, 8, tmp_path / "v.mp4", crf=18, timeout=60)
