"""Tiny random-weight diffusers pipelines, built and saved locally (nothing is downloaded).

Configurations come from /work/shared/MODELS.md section 4 (Wan: the smallest sizes its modules
accept, with a UMT5 encoder and a T5 Unigram tokenizer built in memory). The weights are random, so outputs
are noise: tests built on these check plumbing (shapes, formats, seeds, adapters, progress),
never image quality.

Every builder writes into a directory it is given and returns the path it wrote, so a
session- or module-scoped fixture can call it once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# No model hub: set before anything imports huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel

from core.spec import Pipeline, RunContext, RunResult
from devkit.progress import ProgressLog  # here too: tests name it tiny.ProgressLog

_WORDS = ("a", "photo", "of", "the", "red", "cat", "wooden", "bench", "make", "it", "snow", "blue", "sky")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def clip_tokenizer() -> Any:
    """A CLIP BPE tokenizer built in memory: byte characters, a few merged words, specials."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        if len(word) < 2:
            continue
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            a, b = pieces[0], pieces[1]
            if (a, b) not in merges:
                merges.append((a, b))
            merged = a + b
            if merged not in vocab:
                vocab[merged] = len(vocab)
            pieces = [merged, *pieces[2:]]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def t5_tokenizer() -> Any:
    """A T5 Unigram tokenizer with a small vocabulary (no sentencepiece file needed)."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -3.0) for w in _WORDS]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces += [(c, -5.0) for c in chars] + [("▁" + c, -5.5) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _clip_text_encoder(tok: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )


def _vae(**extra: Any) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=128,
        norm_num_groups=8,
        layers_per_block=1,
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        **extra,
    )


def _saved_flux_transformer(pipeline_dir: Path) -> Any:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(
        pipeline_dir, subfolder="transformer", local_files_only=True
    )


def _random_lora_config(target_modules: list[str]) -> Any:
    """A rank-4 LoRA whose matrices are both random (``init_lora_weights=False``)."""
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=16, target_modules=target_modules, init_lora_weights=False)


def _tiny_t5(tok: Any) -> dict[str, Any]:
    """The config of a tiny T5-family text encoder over ``tok`` (Flux's T5, Wan's UMT5)."""
    return {
        "vocab_size": len(tok),
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 37,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "decoder_start_token_id": 0,
    }


def build_tiny_fluxfill(out_dir: Path) -> Path:
    """Build and save a ~0.1 M-parameter random FluxFillPipeline (vae_scale_factor 8, sizes in 16s)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tok = clip_tokenizer()
    tok2 = t5_tokenizer()
    text_encoder = _clip_text_encoder(tok)
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(T5Config(**_tiny_t5(tok2)))
    c, s = 4, 8  # latent channels, vae scale factor
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=8 * c + 4 * s * s,
        out_channels=4 * c,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,
    )
    vae = _vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    pipe = FluxFillPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tok2,
        transformer=transformer,
    )
    pipe.save_pretrained(out_dir)
    return out_dir


def build_tiny_instruct_pix2pix(out_dir: Path) -> Path:
    """Build and save a ~1 M-parameter random StableDiffusionInstructPix2PixPipeline."""
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )

    tok = clip_tokenizer()
    text_encoder = _clip_text_encoder(tok)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=8,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir)
    return out_dir


def build_tiny_wan(out_dir: Path) -> Path:
    """Build and save a ~40 k-parameter random WanPipeline (Wan 2.1 layout; sizes in 16s, 4k+1 frames).

    The text encoder is a 2-layer UMT5 (Wan's encoder class) over :func:`t5_tokenizer`; the VAE has
    Wan's 8x spatial and 4x temporal compression, so frame counts and sizes behave as the real model's.
    """
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    tok = t5_tokenizer()
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(**_tiny_t5(tok)))
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    pipe = WanPipeline(
        tokenizer=tok,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=transformer,
    )
    pipe.save_pretrained(out_dir)
    return out_dir


def qwen_tokenizer() -> Any:
    """A Qwen2 byte-level tokenizer built in memory: the 256 byte characters and Qwen's specials."""
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(_bytes_to_unicode().values())}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    specials += ["<|image_pad|>", "<|video_pad|>"]
    for token in specials:
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    return tok


def build_tiny_qwen_image_edit(out_dir: Path, *, plus: bool = False) -> Path:
    """Build and save a tiny random QwenImageEditPipeline (``plus``: QwenImageEditPlusPipeline).

    The sizes follow diffusers' own fast tests of these pipelines; the Qwen2.5-VL encoder and its
    processor are built in memory. The processor's image and video processors need torchvision.
    """
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tok = qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")}
    ids |= {t: tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>")}
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config={
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                "rope_theta": 1000000.0,
                "vocab_size": len(tok),
            },
            vision_config={
                "depth": 2,
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_heads": 2,
                "out_hidden_size": 16,
            },
            hidden_size=16,
            vocab_size=len(tok),
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        )
    )
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(
        base_dim=24,
        z_dim=4,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    # Few vision tokens per image: the encoder sees at most 64 patches of 28x28.
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(),
    )
    pipeline_cls: Any = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    pipe = pipeline_cls(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        tokenizer=tok,
        processor=processor,
    )
    pipe.save_pretrained(out_dir)
    return out_dir


def write_flux_transformer_gguf_q8(pipeline_dir: Path, out_path: Path) -> Path:
    """Write the saved tiny Flux transformer as a GGUF file, Q8_0 where the shape allows.

    Keys keep the diffusers names, so diffusers loads it without key conversion. 2-D ``.weight``
    tensors whose last dimension is a multiple of 32 (the Q8_0 block) are quantized; the rest stay F32.
    """
    import gguf

    transformer = _saved_flux_transformer(pipeline_dir)
    writer = gguf.GGUFWriter(str(out_path), arch="flux")
    for name, tensor in transformer.state_dict().items():
        arr = tensor.detach().to(torch.float32).cpu().numpy()
        if name.endswith(".weight") and arr.ndim == 2 and arr.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, np.ascontiguousarray(arr))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def write_tiny_lora(
    pipeline_dir: Path,
    out_dir: Path,
    *,
    kind: str,
    seed: int = 1,
    text_encoder: bool = False,
    alpha: int | None = None,
) -> Path:
    """Create a random LoRA for the tiny pipeline's denoiser with peft; save it as the pipeline does.

    ``kind`` is ``"flux"`` or ``"wan"`` (transformer attention projections) or ``"sd"`` (UNet attention).
    ``text_encoder=True`` (flux only) adds layers for the CLIP text encoder too.
    ``init_lora_weights=False`` makes both LoRA matrices random, so the adapter visibly changes
    the output. ``alpha`` (wan only) writes the adapter's configuration, rank 4 and this
    ``lora_alpha``, into the file's header as diffusers' training scripts do; without it there is
    no header and loaders assume ``alpha = rank``. Returns the ``.safetensors`` file.
    """
    from peft import inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    config = _random_lora_config(["to_q", "to_k", "to_v", "to_out.0"])
    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "flux":
        from diffusers import FluxFillPipeline

        transformer = _saved_flux_transformer(pipeline_dir)
        transformer.add_adapter(config)
        layers = get_peft_model_state_dict(transformer)
        text_layers = None
        if text_encoder:
            from transformers import CLIPTextModel

            clip = CLIPTextModel.from_pretrained(
                pipeline_dir, subfolder="text_encoder", local_files_only=True
            )
            clip_config = _random_lora_config(["q_proj", "k_proj", "v_proj", "out_proj"])
            # peft directly: transformers' own add_adapter wants a newer peft than diffusers does.
            text_layers = get_peft_model_state_dict(inject_adapter_in_model(clip_config, clip))
        FluxFillPipeline.save_lora_weights(
            out_dir, transformer_lora_layers=layers, text_encoder_lora_layers=text_layers
        )
    elif kind == "sd":
        from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(pipeline_dir, subfolder="unet", local_files_only=True)
        unet.add_adapter(config)
        layers = get_peft_model_state_dict(unet)
        StableDiffusionInstructPix2PixPipeline.save_lora_weights(out_dir, unet_lora_layers=layers)
    elif kind == "wan":
        from diffusers import WanPipeline, WanTransformer3DModel

        wan = WanTransformer3DModel.from_pretrained(
            pipeline_dir, subfolder="transformer", local_files_only=True
        )
        wan.add_adapter(config)
        metadata = None
        if alpha is not None:
            metadata = {"r": 4, "lora_alpha": alpha, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
        WanPipeline.save_lora_weights(
            out_dir,
            transformer_lora_layers=get_peft_model_state_dict(wan),
            transformer_lora_adapter_metadata=metadata,
        )
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return out_dir / "pytorch_lora_weights.safetensors"


# -- helpers for running pipelines in tests ------------------------------------------------------


@contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Run torch on one intra-op thread for the block, then restore the previous count.

    These models are tiny: a second thread buys nothing, and on a busy 2-core machine its
    spinning waits made the tests 2-3x slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_job(
    pipeline: Pipeline,
    inputs_model: type[BaseModel],
    job: dict[str, Any],
    files: dict[str, Path],
    workdir: Path,
    progress: ProgressLog | None = None,
) -> tuple[RunResult[Any], np.ndarray]:
    """Run ``job`` in ``workdir`` (created if missing); the result and its file's RGB pixels (int16)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(job_id="job", workdir=workdir, files=files, progress=progress or ProgressLog())
    result = pipeline.run(inputs_model.model_validate(job), ctx)
    with Image.open(result.files[result.outputs.result_file]) as written:
        pixels = np.asarray(written.convert("RGB")).astype(np.int16)
    return result, pixels
