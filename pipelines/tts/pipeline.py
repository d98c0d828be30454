"""The ``tts`` pipeline: text checks, chunked speech, joining, loudness, encoding.

1. check and prepare the text (:mod:`pipelines.tts.checks`): every
   :class:`~core.errors.InvalidInput` about the text, speakers and voices happens here, and the
   backend checks the voices, before any model work;
2. split the turns into chunks of at most the backend's ``max_chunk_chars``;
3. speak them in batches of ``max_batch_chunks`` (chunks of several jobs share a batch under
   :meth:`TtsPipeline.run_batch`), reporting progress before and after every model call (the
   progress call is also where a cancel stops the job, between chunks);
4. join the chunks with short silences and equal-power fades, resample to the requested rate,
   normalise loudness (BS.1770) with peaks limited, encode with ffmpeg;
5. measure loudness and peak on the decoded file, so the outputs describe what was written.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InvalidInput, PermanentError
from core.spec import RunContext, RunResult
from pipelines.tts.audio import (
    CODEC_LOSS_LU,
    ENCODINGS,
    LOSSLESS,
    SILENCE_LUFS,
    as_written,
    decode,
    encode,
    join,
    loudness,
    normalize_loudness,
    output_rate,
    resample,
)
from pipelines.tts.audio import peak_dbfs as measure_peak
from pipelines.tts.backend import Audio, Chunk, ChunkRequest, SpeechBackend, Turn, Voice, chunk_seed
from pipelines.tts.checks import prepare
from pipelines.tts.spec import TtsConfig, TtsInputs, TtsOutputs
from pipelines.tts.stream import encode_piece, piece_audio
from pipelines.tts.text import chunk_turns

log = logging.getLogger(__name__)

#: share of the progress bar for speaking (the rest: checks before, joining and encoding after)
_SPEAK_FROM, _SPEAK_TO = 0.05, 0.9
#: the longest chunk of a streamed job: about a sentence, so that the first audio comes early
STREAM_CHUNK_CHARS = 120


@dataclass
class _Job:
    """One job on its way through :meth:`TtsPipeline._speak`: checked, chunked, then spoken."""

    inputs: TtsInputs
    ctx: RunContext
    voices: tuple[Voice, ...]
    voice_names: list[str]
    chunks: list[Chunk]
    seed: int
    started: float
    timings: dict[str, float]
    pieces: list[Audio | None] = field(default_factory=list)
    error: Exception | None = None
    #: chunks published so far (a streamed job: ``inputs.stream``)
    streamed: int = 0

    @property
    def spoken(self) -> int:
        return sum(piece is not None for piece in self.pieces)


def _distinct(jobs: Iterable[_Job]) -> list[_Job]:
    return list({id(job): job for job in jobs}.values())


class TtsPipeline:
    """Loaded once per process (the backend's model with it); :meth:`run` per job, or
    :meth:`run_batch` for jobs that arrived together (their chunks share model calls)."""

    def __init__(self, config: TtsConfig, backend: SpeechBackend) -> None:
        self.config = config
        self.backend = backend
        #: what each lossy codec took from the loudness of the last job encoded with it (LU)
        self._codec_loss: dict[str, float] = dict(CODEC_LOSS_LU)

    def run(self, inputs: TtsInputs, ctx: RunContext) -> RunResult[TtsOutputs]:
        job = self._plan(inputs, ctx)
        self._speak([job])
        if job.error is not None:
            raise job.error
        return self._finish(job, batch_jobs=1)

    # -- batching across jobs (gpu_service/batching.py) -------------------------------------------

    def batch_key(self, inputs: Any) -> Hashable:
        """Every job of this process may share calls: the backend is the same, and each chunk
        carries its own job's voices, speed and seed."""
        return self.backend.name

    def run_batch(self, items: Sequence[tuple[Any, RunContext]]) -> list[RunResult[Any] | Exception]:
        """Several jobs, their chunks spoken together ``max_batch_chunks`` at a time (Piper: one by
        one). Each job gets the audio :meth:`run` gives it alone; a bad input, a failing chunk or a
        cancel ends only its own job."""
        results: list[RunResult[Any] | Exception] = [PermanentError("not run")] * len(items)
        planned: list[tuple[int, _Job]] = []
        for index, (inputs, ctx) in enumerate(items):
            try:
                planned.append((index, self._plan(inputs, ctx)))
            except Exception as exc:  # this job's text or voices, not its batch-mates'
                results[index] = exc
        self._speak([job for _, job in planned])
        for index, job in planned:
            try:
                if job.error is not None:
                    raise job.error
                results[index] = self._finish(job, batch_jobs=len(planned))
            except Exception as exc:
                results[index] = exc
        return results

    # -- the steps of a job ------------------------------------------------------------------------

    def _plan(self, inputs: TtsInputs | dict[str, Any], ctx: RunContext) -> _Job:
        """Check the text and voices and cut the chunks: every user error before any model work."""
        if not isinstance(inputs, TtsInputs):
            inputs = TtsInputs.model_validate(inputs)
        t0 = time.perf_counter()
        ctx.progress(0.0, "checking text")
        prepared = prepare(inputs, self.config, self.backend.voice_names())
        voices = tuple(
            Voice(name=name, reference=self._reference(ctx, prepared.references.get(i)), label=label)
            for i, (name, label) in enumerate(zip(prepared.voice_names, prepared.script.labels, strict=True))
        )
        self.backend.check_voices(voices)
        chunks = [
            Chunk(turns=tuple(Turn(speaker, text) for speaker, text in chunk))
            for chunk in chunk_turns(
                prepared.script.turns,
                min(self.backend.max_chunk_chars, STREAM_CHUNK_CHARS)
                if inputs.stream
                else self.backend.max_chunk_chars,
                multi_speaker=self.backend.multi_speaker,
            )
        ]
        log.info(
            "tts job %s: %d chars, %d speakers, %d chunks, backend %s",
            ctx.job_id, len(inputs.text), len(voices), len(chunks), self.backend.name,
        )  # fmt: skip
        return _Job(
            inputs=inputs,
            ctx=ctx,
            voices=voices,
            voice_names=list(prepared.voice_names),
            chunks=chunks,
            seed=inputs.seed if inputs.seed is not None else secrets.randbelow(2**32),
            started=t0,
            timings={"checks": time.perf_counter() - t0, "inference": 0.0},
            pieces=[None] * len(chunks),
        )

    def _speak(self, jobs: list[_Job]) -> None:
        """Speak every job's chunks, up to ``max_batch_chunks`` (of any jobs) per call.

        Progress goes to each job before and after every call that holds its chunks; a job whose
        progress call raises (a cancel) drops out there, between chunks. Failures land on
        ``job.error``.
        """
        queue = deque((job, i) for job in jobs for i in range(len(job.chunks)))
        size = max(1, self.backend.max_batch_chunks)
        while queue:
            part: list[tuple[_Job, int]] = []
            while queue and len(part) < size:
                job, i = queue.popleft()
                if job.error is None:
                    part.append((job, i))
            for job in _distinct(j for j, _ in part):
                self._report(job)  # a cancel stops the job here, before the next model call
            part = [(job, i) for job, i in part if job.error is None]
            if not part:
                continue
            t1 = time.perf_counter()
            spoken = self._speak_part(part)
            seconds = time.perf_counter() - t1
            for (job, i), audio in zip(part, spoken, strict=True):
                if audio is not None:
                    job.pieces[i] = audio
            for job in _distinct(j for j, _ in part):
                job.timings["inference"] += seconds
                if job.inputs.stream and job.error is None:
                    self._stream(job)
                self._report(job)

    def _speak_part(self, part: list[tuple[_Job, int]]) -> list[Audio | None]:
        """One call's chunks; if it fails and holds several jobs, each job's chunks alone, so the
        failure ends only the job it belongs to (each chunk's audio is the same either way)."""
        requests = [
            ChunkRequest(job.chunks[i], job.voices, job.inputs.speed, chunk_seed(job.seed, i))
            for job, i in part
        ]
        jobs = _distinct(job for job, _ in part)
        try:
            return list(self.backend.speak_chunks(requests))
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].error = exc
                return [None] * len(part)
            log.warning(
                "a tts batch of %d jobs failed (%s); speaking each job alone", len(jobs), type(exc).__name__
            )
        out: list[Audio | None] = [None] * len(part)
        for job in jobs:
            mine = [n for n, (j, _) in enumerate(part) if j is job]
            try:
                audio = self.backend.speak_chunks([requests[n] for n in mine])
            except Exception as exc:
                job.error = exc
                continue
            for n, samples in zip(mine, audio, strict=True):
                out[n] = samples
        return out

    def _stream(self, job: _Job) -> None:
        """Publish the job's chunks spoken so far that follow the last one published, in order."""
        rate = self.backend.sample_rate
        try:
            while job.streamed < len(job.pieces) and (piece := job.pieces[job.streamed]) is not None:
                index = job.streamed
                audio = piece_audio(
                    piece,
                    index,
                    rate,
                    gap_seconds=self.config.gap_seconds,
                    fade_seconds=self.config.crossfade_seconds,
                )
                stream_dir = Path(job.ctx.workdir) / "stream"
                stream_dir.mkdir(exist_ok=True)
                path, seconds = encode_piece(
                    audio,
                    rate,
                    job.inputs.sample_rate or rate,
                    job.inputs.format,
                    index,
                    stream_dir,
                    loudness_lufs=job.inputs.loudness,
                    ceiling_dbfs=self.config.peak_limit_dbfs,
                )
                item = {"index": index, "bytes": path.stat().st_size, "seconds": round(seconds, 3)}
                job.ctx.publish(f"stream/{path.name}", path, item)
                path.unlink()
                job.streamed += 1
        except Exception as exc:  # this job's chunk, not its batch-mates'
            job.error = exc

    @staticmethod
    def _report(job: _Job) -> None:
        done, total = job.spoken, len(job.chunks)
        try:
            job.ctx.progress(
                _SPEAK_FROM + (_SPEAK_TO - _SPEAK_FROM) * done / total, f"spoken {done}/{total} chunks"
            )
        except Exception as exc:  # a cancel or a lost lease stops this job only
            job.error = exc

    def _finish(self, job: _Job, *, batch_jobs: int) -> RunResult[TtsOutputs]:
        """Join, level, encode and measure one job's spoken chunks."""
        inputs, ctx, timings = job.inputs, job.ctx, job.timings
        pieces = [piece for piece in job.pieces if piece is not None]
        assert len(pieces) == len(job.chunks)
        rate = self.backend.sample_rate
        target_rate = inputs.sample_rate or rate
        t2 = time.perf_counter()
        ctx.progress(_SPEAK_TO, "joining and encoding")
        audio = join(
            pieces, rate, gap_seconds=self.config.gap_seconds, fade_seconds=self.config.crossfade_seconds
        )
        heard = loudness(audio, rate) if len(audio) else SILENCE_LUFS
        if heard <= SILENCE_LUFS:
            raise InvalidInput("the text produced no speech: give words to speak", code="no_speech")
        if target_rate != rate:
            audio = resample(audio, rate, target_rate)
            heard = loudness(audio, target_rate)
        fmt, lossless = inputs.format, inputs.format in LOSSLESS
        # Lossy codecs cut the highs that K-weighting counts (MP3 lands ~0.5 LU low): the first
        # encode is aimed over the target by what the codec took last time, so one encode is
        # usually enough; only a miss of more than 0.3 LU costs a second one.
        aim = inputs.loudness + (0.0 if lossless else self._codec_loss.get(fmt, 0.0))
        leveled = normalize_loudness(audio, target_rate, aim, self.config.peak_limit_dbfs, measured=heard)
        played_rate = output_rate(fmt, target_rate)
        for _ in range(2):
            path = encode(leveled.audio, target_rate, fmt, Path(ctx.workdir))
            # A lossless file holds the samples themselves: measured without decoding it.
            written = as_written(leveled.audio) if lossless else decode(path, fmt, played_rate)
            measured = loudness(written, played_rate)
            miss = inputs.loudness - measured
            if not lossless and measured > SILENCE_LUFS:
                self._codec_loss[fmt] = min(max(leveled.loudness_lufs - measured, -3.0), 3.0)
            if abs(miss) <= 0.3:
                break
            leveled = normalize_loudness(
                leveled.audio, target_rate, leveled.loudness_lufs + miss, self.config.peak_limit_dbfs
            )
        timings["encode"] = time.perf_counter() - t2
        timings["total"] = time.perf_counter() - job.started

        key = ENCODINGS[fmt][0]
        duration = len(leveled.audio) / target_rate
        outputs = TtsOutputs(
            duration_seconds=round(duration, 3),
            sample_rate=played_rate,
            format=inputs.format,
            loudness_lufs=round(measured, 2),
            peak_dbfs=round(measure_peak(written), 2),
            chunks=len(job.chunks),
            backend=self.backend.name,
            voices=job.voice_names,
        )
        metadata: dict[str, Any] = {
            "backend": self.backend.name,
            "batch_jobs": batch_jobs,
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "real_time_factor": round(timings["inference"] / duration, 4) if duration else None,
        }
        return RunResult(outputs=outputs, files={key: path}, metadata=metadata, uri_fields={"audio": key})

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
