"""The ``tts`` pipeline: text checks, chunked speech, joining, loudness, encoding.

1. check and prepare the text (:mod:`pipelines.tts.checks`): every
   :class:`~core.errors.InvalidInput` about the text, speakers and voices happens here, and the
   backend checks the voices, before any model work;
2. split the turns into chunks of at most the backend's ``max_chunk_chars``;
3. speak them in batches of ``max_batch_chunks``, reporting progress after every chunk (the
   progress call is also where a cancel stops the job, between chunks);
4. join the chunks with short silences and equal-power fades, resample to the requested rate,
   normalise loudness (BS.1770) with peaks limited, encode with ffmpeg;
5. measure loudness and peak on the decoded file, so the outputs describe what was written.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any

from core.errors import InvalidInput
from core.spec import RunContext, RunResult
from pipelines.tts import TtsConfig, TtsInputs, TtsOutputs
from pipelines.tts.audio import (
    ENCODINGS,
    decode,
    encode,
    join,
    loudness,
    normalize_loudness,
    output_rate,
    resample,
)
from pipelines.tts.audio import peak_dbfs as measure_peak
from pipelines.tts.backend import Audio, Chunk, SpeechBackend, Turn, Voice
from pipelines.tts.checks import prepare
from pipelines.tts.text import chunk_turns

log = logging.getLogger(__name__)

#: share of the progress bar for speaking (the rest: checks before, joining and encoding after)
_SPEAK_FROM, _SPEAK_TO = 0.05, 0.9


class TtsPipeline:
    """Loaded once per process (the backend's model with it); :meth:`run` per job."""

    def __init__(self, config: TtsConfig, backend: SpeechBackend) -> None:
        self.config = config
        self.backend = backend

    def run(self, inputs: TtsInputs, ctx: RunContext) -> RunResult[TtsOutputs]:
        if not isinstance(inputs, TtsInputs):
            inputs = TtsInputs.model_validate(inputs)
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        ctx.progress(0.0, "checking text")
        prepared = prepare(inputs, self.config, self.backend.voice_names())
        voices = [
            Voice(name=name, reference=self._reference(ctx, prepared.references.get(i)))
            for i, name in enumerate(prepared.voice_names)
        ]
        self.backend.check_voices(voices)
        rate = self.backend.sample_rate
        target_rate = inputs.sample_rate or rate
        chunks = [
            Chunk(turns=tuple(Turn(speaker, text) for speaker, text in chunk))
            for chunk in chunk_turns(
                prepared.script.turns, self.backend.max_chunk_chars, multi_speaker=self.backend.multi_speaker
            )
        ]
        timings["checks"] = time.perf_counter() - t0
        log.info(
            "tts job %s: %d chars, %d speakers, %d chunks, backend %s",
            ctx.job_id, len(inputs.text), len(voices), len(chunks), self.backend.name,
        )  # fmt: skip

        t1 = time.perf_counter()
        pieces = self._speak(chunks, voices, inputs, ctx)
        timings["inference"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        ctx.progress(_SPEAK_TO, "joining and encoding")
        audio = join(
            pieces, rate, gap_seconds=self.config.gap_seconds, fade_seconds=self.config.crossfade_seconds
        )
        if not len(audio) or loudness(audio, rate) <= -70.0:
            raise InvalidInput("the text produced no speech: give words to speak", code="no_speech")
        audio = resample(audio, rate, target_rate)
        leveled = normalize_loudness(audio, target_rate, inputs.loudness, self.config.peak_limit_dbfs)
        path = encode(leveled.audio, target_rate, inputs.format, Path(ctx.workdir))
        played_rate = output_rate(inputs.format, target_rate)
        written = decode(path, inputs.format, played_rate)
        timings["encode"] = time.perf_counter() - t2
        timings["total"] = time.perf_counter() - t0

        key = ENCODINGS[inputs.format][0]
        duration = len(leveled.audio) / target_rate
        outputs = TtsOutputs(
            duration_seconds=round(duration, 3),
            sample_rate=played_rate,
            format=inputs.format,
            loudness_lufs=round(loudness(written, played_rate), 2),
            peak_dbfs=round(measure_peak(written), 2),
            chunks=len(chunks),
            backend=self.backend.name,
            voices=list(prepared.voice_names),
        )
        metadata: dict[str, Any] = {
            "backend": self.backend.name,
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "real_time_factor": round(timings["inference"] / duration, 4) if duration else None,
        }
        return RunResult(outputs=outputs, files={key: path}, metadata=metadata, uri_fields={"audio": key})

    def _speak(
        self, chunks: list[Chunk], voices: list[Voice], inputs: TtsInputs, ctx: RunContext
    ) -> list[Audio]:
        seed = inputs.seed if inputs.seed is not None else secrets.randbelow(2**32)
        total = len(chunks)
        batch = max(1, self.backend.max_batch_chunks)
        pieces: list[Audio] = []

        def report(done: int) -> None:
            spoken = len(pieces) + done
            ctx.progress(
                _SPEAK_FROM + (_SPEAK_TO - _SPEAK_FROM) * spoken / total, f"spoken {spoken}/{total} chunks"
            )

        for start in range(0, total, batch):
            report(0)  # a cancel between chunks stops here, before the next model call
            part = chunks[start : start + batch]
            pieces.extend(
                self.backend.synthesize(part, voices, speed=inputs.speed, seed=seed, on_chunk=report)
            )
        return pieces

    @staticmethod
    def _reference(ctx: RunContext, label: str | None) -> Path | None:
        """The local copy of a speaker's reference recording, if the job gave one."""
        if label is None:
            return None
        path = ctx.files.get(f"references.{label}")
        if path is None:
            raise InvalidInput(
                f"the reference recording of {label} was not downloaded", code="reference_missing"
            )
        return Path(path)


def load(config: TtsConfig) -> TtsPipeline:
    """The spec's loader: build the configured backend (its model loads here, once)."""
    if not isinstance(config, TtsConfig):
        config = TtsConfig.model_validate(config)
    backend: SpeechBackend
    if config.backend == "piper":
        from pipelines.tts.piper_backend import PiperBackend

        backend = PiperBackend(config)
    else:
        from pipelines.tts.vibevoice import load_vibevoice

        if config.model_dir is None:
            raise ValueError("the vibevoice backend needs model_dir (PIPELINES__TTS__MODEL_DIR)")
        backend = load_vibevoice(
            config.model_dir,
            device=config.device,
            attention=config.attention,
            cfg_scale=config.cfg_scale,
            voices_dir=config.voices_dir,
            max_chunk_chars=config.max_chunk_chars or 1500,
            max_batch_chunks=config.max_batch_chunks or 4,
        )
    return TtsPipeline(config, backend)
