"""VibeVoice: multi-speaker speech with a cloned voice per speaker, with transformers.

A chunk becomes one VibeVoice prompt: the checkpoint's chat template renders a system line, one
reference recording per speaker of the chunk (encoded by the acoustic tokenizer, 7.5 frames a
second) and the script (``Speaker 0: ...`` lines, speakers numbered from 0 in the order they first
speak in the chunk, as the model was trained), then the LM speaks it frame by frame: each audio
token's hidden state conditions the diffusion head (classifier-free guidance at ``cfg_scale``),
whose latent the acoustic decoder turns into 3200 samples at 24 kHz.

Memory plan (7B checkpoint, bf16; the numbers are from the model's shape, not measured here):

======================  =========  ============================================================
part                    size       notes
======================  =========  ============================================================
weights                 ~18.6 GB   Qwen2.5-7B LM (~7.6 B parameters, ~15.2 GB) + acoustic
                                   encoder/decoder and semantic encoder (~1.0 B, ~2.0 GB) +
                                   diffusion head and connectors (~0.65 B, ~1.3 GB); all on GPU
KV cache                ~56 KiB    per token and sequence (28 layers x 4 KV heads x 128 x 2 x
                                   bf16); a chunk of 1500 characters with 4 references of 30 s
                                   is ~3,200 tokens, ~0.2 GB, plus the shorter CFG branch
decoder, activations    < 1 GB     the acoustic decoder streams with a padding cache
======================  =========  ============================================================

On an L4 (24 GB, ~22.5 GB free after the CUDA context) the weights plus the 3 GB headroom of
:mod:`pipelines.imaging.memory` just fit: its ladder says ``gpu`` placement, tight. Batches of 4
chunks add ~1-2 GB of cache and fit in the headroom; more do not, so ``max_batch_chunks`` stays
at 4 there. On 40 GB and larger GPUs (A100, H100) the same weights leave room for batches of 8-16.
The ladder's lower rungs do not carry over to an autoregressive model: the LM (~80 % of the
weights) runs once per 0.13 s of audio, so model offload would copy 15 GB over PCIe per frame and
sequential offload would be slower still. A GPU whose free memory cannot hold all the weights
plus headroom is refused at load with the figures (use the 1.5B checkpoint there, ~5.4 GB in
bf16). A batch that runs out of memory anyway (long references, a busy GPU) is retried in halves,
which gives the same audio (see Determinism); one chunk that does not fit is
:class:`~core.errors.OutOfGpuMemory` (retryable: another instance may have room).

Determinism: each chunk draws its diffusion noise from its own generator, seeded from the job's
seed and the chunk's index, and the reference recordings are encoded without the sigma-VAE noise
the model adds by default, so a chunk's audio does not depend on which chunks share its batch.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from core.errors import InvalidInput, OutOfGpuMemory, PermanentError, shown
from pipelines.imaging.diffusion import free_bytes, gpu_errors
from pipelines.imaging.memory import DEFAULT_HEADROOM, choose_memory_strategy
from pipelines.media import AUDIO
from pipelines.tts.backend import Audio, Chunk, ChunkDone, ChunkRequest, SpeechBackend, Voice, chunk_seed

log = logging.getLogger(__name__)

ATTENTIONS: tuple[str, ...] = ("auto", "flash_attention_2", "sdpa", "eager")

MAX_SPEAKERS = 4
"""VibeVoice was trained on up to four speakers per script."""
MIN_REFERENCE_SECONDS = 1.0
MAX_REFERENCE_SECONDS = 60.0
"""A reference is part of the prompt: 60 s is 450 tokens per speaker. Longer ones are refused, not cut."""
SLOWEST_CHARS_PER_SECOND = 5.0
"""Token budget of a chunk: speech this slow (English is ~14) plus :data:`BUDGET_PAD_SECONDS`."""
BUDGET_PAD_SECONDS = 2.0
SILENT_PEAK = 1e-4
MIN_SPEED, MAX_SPEED = 0.25, 4.0
DECODE_TIMEOUT_SECONDS = 60.0


REQUIRED_FILES = ("config.json",)  # generation_config.json is optional: transformers has defaults

# transformers' own annotations do not type-check under strict mypy; handled as untyped here.
_VibeVoice: Any = transformers.VibeVoiceForConditionalGeneration
_AutoProcessor: Any = transformers.AutoProcessor
_LogitsProcessorList: Any = transformers.LogitsProcessorList
_LmGuidance: Any = transformers.UnbatchedClassifierFreeGuidanceLogitsProcessor


# --- loading ------------------------------------------------------------------------------------


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_device(device: str | None) -> str:
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def choose_attention(attention: str, device: str, *, flash_available: bool) -> str:
    """The LM's attention kernel: flash-attention 2 on CUDA when installed, else SDPA.

    Raises:
        PermanentError: an unknown name, or flash-attention asked for where it cannot run.
    """
    if attention not in ATTENTIONS:
        raise PermanentError(f"attention must be one of {', '.join(ATTENTIONS)}, not {shown(attention)}")
    on_gpu = device.startswith("cuda")
    if attention == "auto":
        return "flash_attention_2" if on_gpu and flash_available else "sdpa"
    if attention == "flash_attention_2" and not (on_gpu and flash_available):
        why = "the flash_attn package is not installed" if on_gpu else f"the device is {device!r}"
        raise PermanentError(f"attention 'flash_attention_2' cannot be used: {why}")
    return attention


def check_model_dir(model_dir: str) -> Path:
    """The model directory, if it looks like a complete VibeVoice checkpoint with its processor.

    Raises:
        PermanentError: missing directory or files (a deployment error, not the job's).
    """
    path = Path(model_dir)
    if not model_dir or not path.is_dir():
        raise PermanentError(f"the VibeVoice model directory {model_dir!r} does not exist")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if not any(path.glob("*.safetensors")):
        missing.append("*.safetensors (the weights)")
    if not (path / "processor_config.json").is_file() and not (path / "preprocessor_config.json").is_file():
        missing.append("processor_config.json")
    if not (path / "tokenizer.json").is_file() and not (path / "vocab.json").is_file():
        missing.append("tokenizer.json")
    if missing:
        raise PermanentError(
            f"the VibeVoice model directory {model_dir!r} is incomplete: missing {', '.join(missing)}"
        )
    return path


def checkpoint_bytes(path: Path, bytes_per_value: int) -> tuple[int, int]:
    """Bytes of all weights and of the LM's alone once loaded at ``bytes_per_value``, from the
    safetensors headers (no tensor is read).

    Raises:
        PermanentError: a weights file whose header is not safetensors.
    """
    total = lm = 0
    for file in sorted(path.glob("*.safetensors")):
        try:
            with file.open("rb") as f:
                size = int.from_bytes(f.read(8), "little")
                if not 2 <= size <= 100 * 2**20:
                    raise ValueError(f"header length {size}")
                header = json.loads(f.read(size))
        except (OSError, ValueError) as e:
            raise PermanentError(f"{file} is not a readable safetensors file ({e})") from e
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            n = math.prod(entry["shape"]) * bytes_per_value
            total += n
            if "language_model" in name or name.startswith("lm_head"):
                lm += n
    return total, lm


def check_fits(device: str, free: int | None, weight_bytes: int, lm_bytes: int) -> None:
    """Refuse a GPU that cannot hold all the weights plus headroom (see the module's memory plan).

    Raises:
        PermanentError: with the measured figures.
    """
    strategy = choose_memory_strategy(device, free, weight_bytes, largest_component_bytes=lm_bytes)
    if strategy.placement in ("gpu", "cpu") or free is None:
        return
    raise PermanentError(
        f"VibeVoice needs {weight_bytes / 1e9:.1f} GB of weights plus "
        f"{DEFAULT_HEADROOM / 1e9:.1f} GB of headroom on the GPU, but only {free / 1e9:.1f} GB is "
        "free; offloading does not suit an autoregressive model. Use a larger GPU or a smaller checkpoint."
    )


class _ChunkSeededVibeVoice(_VibeVoice):  # type: ignore[misc]
    """VibeVoice as the original runs it, with diffusion noise from one generator per batch row.

    * The stock model draws the noise of all rows from the global generator at once, so a chunk's
      audio would depend on its neighbours in the batch. ``row_generators`` (set for one
      ``generate`` call) gives each row its own stream; the rows speaking at a step are those of
      the mask that :meth:`_step_negative_branch` receives just before :meth:`_sample_audio_latent`.
    * ``guidance_scale`` is the diffusion head's classifier-free guidance. transformers' generic
      generation also reads it and adds a CFG pass over the LM's logits (one more LM forward per
      frame, and the speak/stop choice mixed with a branch that never saw the speech); the
      original VibeVoice guides the diffusion only, so that processor is left out.
    """

    row_generators: list[torch.Generator] | None = None
    _speaking_rows: list[int] | None = None

    def _get_logits_processor(self, *args: Any, **kwargs: Any) -> Any:
        processors = super()._get_logits_processor(*args, **kwargs)
        return _LogitsProcessorList(p for p in processors if not isinstance(p, _LmGuidance))

    def _step_negative_branch(self, diffusion_mask: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self._speaking_rows = diffusion_mask.nonzero().view(-1).tolist()
        return super()._step_negative_branch(diffusion_mask, *args, **kwargs)

    def _sample_audio_latent(
        self,
        positive_condition: torch.Tensor,
        negative_condition: torch.Tensor,
        noise_scheduler: Any,
        num_diffusion_steps: int,
        guidance_scale: float,
    ) -> torch.Tensor:
        if self.row_generators is None or self._speaking_rows is None:
            return super()._sample_audio_latent(  # type: ignore[no-any-return]
                positive_condition, negative_condition, noise_scheduler, num_diffusion_steps, guidance_scale
            )
        head = self.model.diffusion_head
        device = next(head.parameters()).device
        condition = torch.cat([positive_condition, negative_condition]).to(device)
        size = self.config.audio_config.hidden_size
        noise = torch.cat(
            [torch.randn(1, size, generator=self.row_generators[i]) for i in self._speaking_rows]
        )
        latent = noise.to(condition)
        noise_scheduler.set_timesteps(num_inference_steps=num_diffusion_steps)
        for t in noise_scheduler.timesteps:
            both = torch.cat([latent, latent])
            cond_eps, uncond_eps = head(both, t.repeat(both.shape[0]).to(both), condition=condition).chunk(2)
            guided = uncond_eps + guidance_scale * (cond_eps - uncond_eps)
            latent = noise_scheduler.step(guided, t, latent).prev_sample
        return latent.unsqueeze(1)


def load_vibevoice(
    model_dir: str,
    *,
    device: str | None = None,
    attention: str = "auto",
    cfg_scale: float = 1.3,
    voices_dir: str | None = None,
    max_chunk_chars: int = 1500,
    max_batch_chunks: int = 4,
) -> SpeechBackend:
    """Load VibeVoice and its processor from ``model_dir`` (local files only).

    Args:
        model_dir: a transformers VibeVoice checkpoint with its processor (chat template included).
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``; ``None`` or ``"auto"``: CUDA when present.
        attention: ``auto`` (flash-attention 2 on CUDA when installed, else SDPA), or a kernel name.
        cfg_scale: classifier-free guidance scale of the diffusion head.
        voices_dir: a folder of ``<name>.wav`` reference recordings, the configured voices.
        max_chunk_chars: the longest chunk the pipeline should send.
        max_batch_chunks: chunks generated together in one call.

    Raises:
        PermanentError: missing or incomplete model directory, bad settings, a GPU too small.
    """
    path = check_model_dir(model_dir)
    if not cfg_scale > 0:
        raise PermanentError(f"cfg_scale must be positive, not {cfg_scale!r}")
    if max_batch_chunks < 1 or max_chunk_chars < 1:
        raise PermanentError("max_batch_chunks and max_chunk_chars must be at least 1")
    dev = resolve_device(device)
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise PermanentError(f"device {dev!r} asked for, but CUDA is not available")
    kernel = choose_attention(attention, dev, flash_available=flash_attn_available())
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    weights, lm = checkpoint_bytes(path, dtype.itemsize)
    # Before loading: a GPU that is too small fails in a second, not after minutes of copying.
    check_fits(dev, free_bytes(dev), weights, lm)
    try:
        processor = _AutoProcessor.from_pretrained(path, local_files_only=True)
        with gpu_errors():
            model = _ChunkSeededVibeVoice.from_pretrained(
                path,
                local_files_only=True,
                dtype=dtype,
                device_map=dev,  # straight onto the device: no 18 GB copy in host memory first
                # Only the LM has attention; the audio tokenizers refuse an attention setting.
                attn_implementation={"text_config": kernel},
            ).eval()
    except (OSError, ValueError, KeyError) as e:
        raise PermanentError(f"cannot load VibeVoice from {model_dir!r}: {e}") from e
    if not getattr(processor, "chat_template", None):
        raise PermanentError(f"the VibeVoice processor in {model_dir!r} has no chat template")
    log.info("VibeVoice loaded on %s (%s, %s attention, %.2f GB)", dev, dtype, kernel, weights / 1e9)
    return VibeVoiceBackend(
        model,
        processor,
        device=dev,
        cfg_scale=cfg_scale,
        voices_dir=Path(voices_dir) if voices_dir else None,
        max_chunk_chars=max_chunk_chars,
        max_batch_chunks=max_batch_chunks,
    )


# --- references ---------------------------------------------------------------------------------


def decode_audio(path: Path, sample_rate: int, *, max_seconds: float = MAX_REFERENCE_SECONDS) -> Audio:
    """Mono float32 samples of a local audio file at ``sample_rate``, at most ``max_seconds`` + 1 s.

    Raises:
        ValueError: ffmpeg cannot decode it (the message is ffmpeg's last line).
    """
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", *AUDIO.ffmpeg_input(path),
        "-map", "0:a:0", "-t", f"{max_seconds + 1:.3f}", "-ac", "1", "-ar", str(sample_rate),
        "-f", "f32le", "pipe:1",
    ]  # fmt: skip
    try:
        result = subprocess.run(cmd, capture_output=True, timeout=DECODE_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired as e:
        raise ValueError(f"decoding took longer than {DECODE_TIMEOUT_SECONDS:.0f} s") from e
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        raise ValueError(lines[-1][-200:] if lines else f"ffmpeg exited with {result.returncode}")
    return np.frombuffer(result.stdout, dtype=np.float32).copy()


def change_tempo(audio: Audio, speed: float, sample_rate: int) -> Audio:
    """``audio`` spoken ``speed`` times faster, pitch kept (ffmpeg's atempo, 0.5-2.0 per stage)."""
    if math.isclose(speed, 1.0) or audio.size == 0:
        return audio
    stages: list[float] = []
    rest = speed
    while rest > 2.0:
        stages.append(2.0)
        rest /= 2.0
    while rest < 0.5:
        stages.append(0.5)
        rest /= 0.5
    stages.append(rest)
    chain = ",".join(f"atempo={s:.6f}" for s in stages)
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-f", "f32le", "-ar", str(sample_rate), "-ac", "1",
        "-i", "pipe:0", "-filter:a", chain, "-f", "f32le", "pipe:1",
    ]  # fmt: skip
    result = subprocess.run(
        cmd, input=audio.astype(np.float32).tobytes(), capture_output=True, timeout=300, check=False
    )
    if result.returncode != 0:
        raise PermanentError(f"changing the speed failed: {result.stderr.decode(errors='replace')[-200:]}")
    return np.frombuffer(result.stdout, dtype=np.float32).copy()


def speaker_label(index: int) -> str:
    return f"Speaker {index + 1}"


# --- the backend --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prompt:
    text: str
    references: list[Audio]
    budget_tokens: int


class VibeVoiceBackend:
    """The loaded model and processor; one ``generate`` at a time."""

    name = "vibevoice"
    multi_speaker = True

    def __init__(
        self,
        model: _ChunkSeededVibeVoice,
        processor: Any,
        *,
        device: str,
        cfg_scale: float,
        voices_dir: Path | None,
        max_chunk_chars: int,
        max_batch_chunks: int,
    ) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.cfg_scale = cfg_scale
        self.voices_dir = voices_dir
        self.max_chunk_chars = max_chunk_chars
        self.max_batch_chunks = max_batch_chunks
        self.sample_rate = int(processor.feature_extractor.sampling_rate)
        self.hop = int(model.config.audio_config.hop_length)
        self.processor.tokenizer.padding_side = "left"  # generation continues every row at the end
        self._markers = sorted(str(t) for t in processor.tokenizer.get_added_vocab())
        self._lock = threading.Lock()

    # -- voices

    def voice_names(self) -> list[str]:
        if self.voices_dir is None or not self.voices_dir.is_dir():
            return []
        return sorted(p.stem for p in self.voices_dir.glob("*.wav") if p.is_file())

    def check_voices(self, voices: Sequence[Voice]) -> None:
        self._references(voices)

    def _references(self, voices: Sequence[Voice]) -> list[Audio]:
        """Each speaker's reference samples, checked: the job's own, or a configured voice's file.

        Raises:
            InvalidInput: no voice, too many speakers, an unknown voice name, a reference that
                cannot be decoded, is silent, or is too short or too long.
            PermanentError: a configured voice's file is broken (a deployment error).
        """
        if not voices:
            raise InvalidInput("VibeVoice needs a voice for each speaker; none was given")
        if len(voices) > MAX_SPEAKERS:
            raise InvalidInput(
                f"VibeVoice speaks at most {MAX_SPEAKERS} speakers; this job has {len(voices)}"
            )
        names = self.voice_names()
        out: list[Audio] = []
        for i, voice in enumerate(voices):
            label = voice.label or speaker_label(i)
            if voice.reference is not None:
                out.append(
                    self._reference(voice.reference, f"The reference recording for {label}", InvalidInput)
                )
                continue
            if voice.name not in names:
                known = ", ".join(names) if names else "none are configured"
                raise InvalidInput(
                    f"Unknown voice {shown(voice.name)} for {label}; the voices are: {known}",
                    code="unknown_voice",
                )
            assert self.voices_dir is not None  # names is empty without it
            path = self.voices_dir / f"{voice.name}.wav"
            out.append(self._reference(path, f"The configured voice {voice.name!r}", PermanentError))
        return out

    def _reference(self, path: Path, what: str, error: type[InvalidInput] | type[PermanentError]) -> Audio:
        if not path.is_file():
            raise error(f"{what} is missing", code="bad_reference")
        try:
            audio = decode_audio(path, self.sample_rate)
        except ValueError as e:
            raise error(f"{what} could not be read as audio ({e})", code="bad_reference") from e
        seconds = audio.size / self.sample_rate
        if seconds > MAX_REFERENCE_SECONDS:
            raise error(
                f"{what} is longer than {MAX_REFERENCE_SECONDS:.0f} s; send a shorter clip of the voice",
                code="bad_reference",
            )
        if seconds < MIN_REFERENCE_SECONDS:
            raise error(
                f"{what} is {seconds:.2f} s long; at least {MIN_REFERENCE_SECONDS:.0f} s of speech is needed",
                code="bad_reference",
            )
        if not np.all(np.isfinite(audio)) or float(np.max(np.abs(audio))) < SILENT_PEAK:
            raise error(f"{what} is silent", code="bad_reference")
        return audio

    # -- synthesis

    def budget_tokens(self, chunk: Chunk) -> int:
        """Most audio tokens a chunk may take: far slower speech than anyone's, then the model stops."""
        frames_per_second = self.sample_rate / self.hop
        seconds = BUDGET_PAD_SECONDS + chunk.chars / SLOWEST_CHARS_PER_SECOND
        return math.ceil(seconds * frames_per_second)

    def _prompt(self, chunk: Chunk, references: list[Audio], voices: Sequence[Voice] = ()) -> _Prompt:
        """The chunk as a chat: speakers renumbered from 0 in order of first turn, each one's
        reference attached to its first turn (the template lists voices in that order)."""
        order: dict[int, int] = {}
        messages: list[dict[str, Any]] = []
        for turn in chunk.turns:
            if not 0 <= turn.speaker < len(references):
                raise InvalidInput(
                    f"A turn names speaker {turn.speaker + 1}, but only {len(references)} voices were given"
                )
            label = voices[turn.speaker].label if turn.speaker < len(voices) else None
            # The tokenizer would read these as control tokens (an audio placeholder, end of text).
            for marker in self._markers:
                if marker in turn.text:
                    raise InvalidInput(f"The text contains the reserved marker {shown(marker)}")
            content: list[dict[str, Any]] = [{"type": "text", "text": " ".join(turn.text.split())}]
            if turn.speaker not in order:
                order[turn.speaker] = len(order)
                content.append({"type": "audio", "path": label or speaker_label(turn.speaker)})
            messages.append({"role": str(order[turn.speaker]), "content": content})
        text = self.processor.apply_chat_template(messages, tokenize=False)
        return _Prompt(text, [references[s] for s in order], self.budget_tokens(chunk))

    def synthesize(
        self,
        chunks: Sequence[Chunk],
        voices: Sequence[Voice],
        *,
        speed: float,
        seed: int,
        on_chunk: ChunkDone,
    ) -> list[Audio]:
        base = list(voices)
        requests = [
            ChunkRequest(chunk, tuple(base), speed, chunk_seed(seed, i)) for i, chunk in enumerate(chunks)
        ]
        self._check_speed(speed)
        checked = self._references(base)  # every voice and every chunk's text checked before any model work
        for chunk in chunks:
            self._prompt(chunk, checked, base)
        out: list[Audio] = []
        for start in range(0, len(requests), self.max_batch_chunks):
            out.extend(self.speak_chunks(requests[start : start + self.max_batch_chunks]))
            on_chunk(len(out))
        return out

    def speak_chunks(self, requests: Sequence[ChunkRequest]) -> list[Audio]:
        """Chunks of one or several jobs, each with its job's voices, speed and its own seed, in
        calls of at most ``max_batch_chunks`` rows; each row's audio is what it gives alone."""
        references: dict[tuple[Voice, ...], list[Audio]] = {}  # each job's voices decoded once
        prompts: list[_Prompt] = []
        for request in requests:
            self._check_speed(request.speed)
            if request.voices not in references:
                references[request.voices] = self._references(request.voices)
            prompts.append(self._prompt(request.chunk, references[request.voices], request.voices))
        out: list[Audio] = []
        for start in range(0, len(prompts), self.max_batch_chunks):
            part = slice(start, start + self.max_batch_chunks)
            seeds = [r.seed for r in requests[part]]
            for audio, request in zip(
                self._generate_fitting(prompts[part], seeds), requests[part], strict=True
            ):
                out.append(change_tempo(audio, request.speed, self.sample_rate))
        return out

    @staticmethod
    def _check_speed(speed: float) -> None:
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise InvalidInput(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, not {shown(speed)}")

    def _generate_fitting(self, batch: list[_Prompt], seeds: list[int]) -> list[Audio]:
        """Generate ``batch``; if the GPU runs out of memory, in halves (down to one chunk).

        Chunks are seeded one by one, so the halves give exactly the audio the whole batch would.
        """
        try:
            return self._generate(batch, seeds)
        except OutOfGpuMemory:
            if len(batch) == 1:
                raise
            half = len(batch) // 2
            log.warning("out of GPU memory with %d chunks in a batch; retrying in halves", len(batch))
            return self._generate_fitting(batch[:half], seeds[:half]) + self._generate_fitting(
                batch[half:], seeds[half:]
            )

    def _generate(self, batch: list[_Prompt], seeds: list[int]) -> list[Audio]:
        inputs = self.processor(
            text=[p.text for p in batch],
            audio=[a for p in batch for a in p.references],
            sampling_rate=self.sample_rate,
            padding=True,
            return_tensors="pt",
        ).to(self.device, self.model.dtype)
        max_new = max(p.budget_tokens for p in batch)
        with self._lock, gpu_errors(), torch.inference_mode():
            self.model.row_generators = [torch.Generator().manual_seed(s) for s in seeds]
            try:
                generated = self.model.generate(
                    **inputs,
                    max_new_tokens=max_new,
                    guidance_scale=self.cfg_scale,
                    sample=False,  # references encoded as is: the same conditioning in any batch
                )
            finally:
                self.model.row_generators = None
                self.model._speaking_rows = None
        results: list[Audio] = []
        for prompt, audio in zip(batch, generated, strict=True):
            if audio is None:
                raise PermanentError("VibeVoice produced no speech for a chunk of the text")
            samples = audio.detach().float().cpu().numpy().reshape(-1)
            # A row stops at its own budget, whatever its neighbours' budgets were.
            samples = samples[: prompt.budget_tokens * self.hop]
            if not np.all(np.isfinite(samples)):
                raise PermanentError("VibeVoice produced invalid (non-finite) audio")
            results.append(np.clip(samples, -1.0, 1.0).astype(np.float32))
        return results
