"""Memory strategy choice for given devices, and the adapter/LoRA input rules. No models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipelines.imaging.fields import LoraRef, pick_seed
from pipelines.imaging.memory import MemoryStrategy, choose_memory_strategy, forced_strategy
from pipelines.inpaint.spec import InpaintInputs

GB = 10**9
# FLUX.1 Fill with a GGUF Q8 transformer and bf16 T5 + CLIP + VAE, and its largest component.
FLUX_Q8_ALL = int(22.6 * GB)
FLUX_Q8_TRANSFORMER = int(12.7 * GB)
# The same with the text encoders kept on the CPU: only transformer + VAE on the GPU.
FLUX_Q8_NO_TEXT = int(12.9 * GB)
# Qwen-Image-Edit in bf16: 20B transformer + 7B VL text encoder + VAE.
QWEN_EDIT = int(58 * GB)
QWEN_TRANSFORMER = int(41 * GB)


@pytest.mark.parametrize(
    ("device", "free", "model", "largest", "expected"),
    [
        ("cpu", None, FLUX_Q8_ALL, FLUX_Q8_TRANSFORMER, "cpu"),
        ("cuda", 80 * GB, FLUX_Q8_ALL, FLUX_Q8_TRANSFORMER, "gpu"),
        ("cuda", 24 * GB, FLUX_Q8_ALL, FLUX_Q8_TRANSFORMER, "model_offload+vae_slicing+vae_tiling"),
        ("cuda", 12 * GB, FLUX_Q8_ALL, FLUX_Q8_TRANSFORMER, "sequential_offload+vae_slicing+vae_tiling"),
        (
            "cuda",
            6 * GB,
            FLUX_Q8_ALL,
            FLUX_Q8_TRANSFORMER,
            "sequential_offload+vae_slicing+vae_tiling+attention_slicing",
        ),
        ("cuda:0", 24 * GB, FLUX_Q8_NO_TEXT, FLUX_Q8_TRANSFORMER, "gpu"),
        ("cuda", 18 * GB, FLUX_Q8_NO_TEXT, FLUX_Q8_TRANSFORMER, "gpu+vae_slicing+vae_tiling"),
        ("cpu", None, QWEN_EDIT, QWEN_TRANSFORMER, "cpu"),
        ("cuda", 80 * GB, QWEN_EDIT, QWEN_TRANSFORMER, "gpu"),
        ("cuda", 24 * GB, QWEN_EDIT, QWEN_TRANSFORMER, "sequential_offload+vae_slicing+vae_tiling"),
        ("cuda", 12 * GB, QWEN_EDIT, QWEN_TRANSFORMER, "sequential_offload+vae_slicing+vae_tiling"),
        (
            "cuda",
            6 * GB,
            QWEN_EDIT,
            QWEN_TRANSFORMER,
            "sequential_offload+vae_slicing+vae_tiling+attention_slicing",
        ),
    ],
)
def test_memory_strategy_for_device_sizes(
    device: str, free: int | None, model: int, largest: int, expected: str
) -> None:
    strategy = choose_memory_strategy(device, free, model, largest_component_bytes=largest)
    assert strategy.name == expected
    assert strategy.reason  # the choice is explained (and logged by the loaders)


def test_memory_strategy_estimates_the_largest_component_when_not_given() -> None:
    # 75 % of 22 GB = 16.5 GB largest: 24 GB free cannot hold 22 GB + 3 GiB, can hold 16.5 GB + 3 GiB.
    assert choose_memory_strategy("cuda", 24 * GB, 22 * GB).placement == "model_offload"
    assert choose_memory_strategy("cuda", 16 * GB, 22 * GB).placement == "sequential_offload"


def test_memory_strategy_with_unknown_free_memory_offloads_models() -> None:
    assert choose_memory_strategy("cuda", None, 10 * GB).placement == "model_offload"


def test_forced_memory_strategy_from_config() -> None:
    assert forced_strategy("auto", "cuda") is None
    assert forced_strategy("sequential_offload", "cuda") == MemoryStrategy(
        "sequential_offload", vae_tiling=True, reason="set in config"
    )
    forced_on_cpu = forced_strategy("gpu", "cpu")
    assert forced_on_cpu is not None and forced_on_cpu.placement == "cpu"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("gs://bucket/ink.safetensors", "relative to it"),
        ("/etc/passwd.safetensors", "must be relative"),
        ("../secrets/ink.safetensors", "without '..'"),
        ("styles/ink.bin", "must name a .safetensors file"),
        ("styles\\ink.safetensors", "separator"),
    ],
)
def test_lora_paths_must_be_relative_safetensors_files(path: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LoraRef(path=path)


def test_lora_list_is_limited_and_unique() -> None:
    ok = InpaintInputs.model_validate(
        {
            "image": "gs://bucket/a.png",
            "mask": "gs://bucket/m.png",
            "loras": [{"path": "a.safetensors", "weight": 0.5}, {"path": "styles/b.safetensors"}],
        }
    )
    assert [ref.weight for ref in ok.loras] == [0.5, 1.0]
    with pytest.raises(ValidationError, match="named once"):
        InpaintInputs.model_validate(
            {
                "image": "gs://bucket/a.png",
                "mask": "gs://bucket/m.png",
                "loras": [{"path": "a.safetensors"}] * 2,
            }
        )
    with pytest.raises(ValidationError, match="at most 4"):
        InpaintInputs.model_validate(
            {
                "image": "gs://bucket/a.png",
                "mask": "gs://bucket/m.png",
                "loras": [{"path": f"{i}.safetensors"} for i in range(5)],
            }
        )


def test_pick_seed_keeps_a_given_seed_and_draws_one_otherwise() -> None:
    assert pick_seed(7) == 7
    drawn = {pick_seed(None) for _ in range(5)}
    assert all(0 <= s < 2**32 for s in drawn) and len(drawn) > 1
