"""A tiny random-weight VibeVoice, built and saved locally with its processor (nothing is downloaded).

The directory it writes has the layout of a real checkpoint (``config.json``, safetensors weights,
``generation_config.json``, the processor's feature extractor, tokenizer and chat template), so
tests load it through :func:`pipelines.tts.vibevoice.load_vibevoice` exactly as production loads
the 7B model. About 0.16 M parameters; a short sentence (about 30 audio tokens) took 1.5-3 s on
one thread of a busy 2-core machine, most of it in the audio tokenizers' convolutions.

What is real and what is not:

* The acoustic and semantic tokenizers downsample by 3200 like the released ones (8 * 20 * 20), so
  one generated token is 3200 samples (0.133 s at 24 kHz) and token budgets mean the same thing as
  in production.
* The tokenizer is a byte-level BPE (Qwen2's class) with no merges: every byte is a token.
* The language-model head is zeroed. All logits tie, and ``argmax`` takes the lowest id among the
  tokens VibeVoice allows while speaking; the audio token is given the lowest id, so the random model
  always keeps speaking until its token budget runs out. A random head would pick "stop" or "speak"
  by chance and the tests would depend on that draw.
* Everything else (LM, connectors, diffusion head, tokenizers) is random: the audio is noise at
  about the loudness of speech (see ``initializer_range`` below), and tests built on it check
  plumbing (shapes, rates, seeds, batching, errors), never speech quality.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# No model hub: set before anything imports huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch

from devkit.tiny_diffusers import _bytes_to_unicode

SAMPLE_RATE = 24_000
HOP = 3200
DOWNSAMPLING = [8, 20, 20]  # product 3200, as in the released tokenizers (2*2*4*5*5*8)

AUDIO_TOKEN = "<|vision_pad|>"
AUDIO_BOS = "<|vision_start|>"
AUDIO_EOS = "<|vision_end|>"
END_OF_TEXT = "<|endoftext|>"

# The prompt layout VibeVoice was trained on: a system line, one reference voice per speaker
# (placeholders the processor expands to one audio token per 3200 samples), the script, then the
# start-of-speech token the model continues from. Speakers are the message roles "0", "1", ...
CHAT_TEMPLATE = (
    "{{- ' Transform the text provided by various speakers into speech output, utilizing the "
    "distinct voice of each respective speaker.\\n' -}}"
    "{%- set voiced = namespace(roles=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] | selectattr('type', 'equalto', 'audio') | list "
    "and message['role'] not in voiced.roles -%}"
    "{%- set voiced.roles = voiced.roles + [message['role']] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if voiced.roles -%}"
    "{{- ' Voice input:\\n' -}}"
    "{%- for role in voiced.roles -%}"
    "{{- ' Speaker ' ~ role ~ ':' ~ audio_bos_token|default('" + AUDIO_BOS + "') "
    "~ audio_token|default('" + AUDIO_TOKEN + "') ~ audio_eos_token|default('" + AUDIO_EOS + "') ~ '\\n' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- ' Text input:\\n' -}}"
    "{%- for message in messages -%}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{{- ' Speaker ' ~ message['role'] ~ ': ' ~ item['text'] ~ '\\n' -}}"
    "{%- endfor -%}"
    "{%- endfor -%}"
    "{{- ' Speech output:\\n' ~ audio_bos_token|default('" + AUDIO_BOS + "') -}}"
)


def tokenizer() -> Any:
    """A byte-level BPE tokenizer (Qwen2's class): 256 byte tokens, then the specials.

    The audio token comes first among the specials: with the zeroed LM head it wins every tie.
    """
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(_bytes_to_unicode().values())}
    for special in (AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS, END_OF_TEXT):
        vocab[special] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=32768)
    tok.add_tokens([AddedToken(t, special=True) for t in (AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS)])
    return tok


def _tokenizer_config(hidden_size: int, **extra: Any) -> dict[str, Any]:
    return {
        "hidden_size": hidden_size,
        "num_filters": 4,
        "downsampling_ratios": DOWNSAMPLING,
        "depths": [1] * (len(DOWNSAMPLING) + 1),
        "ffn_expansion": 2,
        # Ten times the default spread: the decoded noise is then about as loud as speech
        # (-27 dBFS RMS) instead of ~-110 dBFS, which loudness normalization would take for silence.
        "initializer_range": 0.1,
        **extra,
    }


def build_tiny_vibevoice(out_dir: Path, *, diffusion_steps: int = 3) -> Path:
    """Build and save a random VibeVoice and its processor into ``out_dir``; returns ``out_dir``."""
    from transformers import (
        VibeVoiceAcousticTokenizerFeatureExtractor,
        VibeVoiceConfig,
        VibeVoiceForConditionalGeneration,
        VibeVoiceProcessor,
    )

    tok = tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in (AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS, END_OF_TEXT)}
    config = VibeVoiceConfig(
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 8192,
            "tie_word_embeddings": False,
        },
        audio_config={"model_type": "vibevoice_acoustic_tokenizer", **_tokenizer_config(8)},
        semantic_model_config={"model_type": "vibevoice_acoustic_tokenizer_encoder", **_tokenizer_config(8)},
        diffusion_head_config={
            "num_hidden_layers": 1,
            "intermediate_size": 64,
            "frequency_embedding_size": 32,
        },
        pad_token_id=ids[END_OF_TEXT],
        eos_token_id=ids[END_OF_TEXT],
        audio_bos_token_id=ids[AUDIO_BOS],
        audio_eos_token_id=ids[AUDIO_EOS],
        audio_token_id=ids[AUDIO_TOKEN],
    )
    torch.manual_seed(0)
    model = VibeVoiceForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    # Saved as a checkpoint's own file: custom keys of a config derived from the model config
    # would be dropped on load.
    model.generation_config._from_model_config = False
    model.generation_config.num_diffusion_steps = diffusion_steps
    model.generation_config.noise_scheduler_class = "DPMSolverMultistepScheduler"
    model.generation_config.noise_scheduler_config = {
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction",
    }
    model.save_pretrained(out_dir)
    processor = VibeVoiceProcessor(
        feature_extractor=VibeVoiceAcousticTokenizerFeatureExtractor(
            sampling_rate=SAMPLE_RATE, pad_to_multiple_of=HOP
        ),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return out_dir
