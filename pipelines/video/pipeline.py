"""The whole video job in one process: ingest, transcribe the audio, OCR the frames, combine.

The service may instead run the parts as separate steps (ingest, then transcription and OCR in
parallel, then a join); each step is a function of :mod:`.ingest`, :mod:`.frames` and :mod:`.ocr`
or a method here (:meth:`VideoPipeline.ingest`, :meth:`VideoPipeline.read_screen`), and this
class is the reference sequence, the fallback, and what the tests run end to end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel

from core.errors import PermanentError
from core.spec import Pipeline, ProgressFn, RunContext, RunResult
from pipelines.transcribe.spec import Segment, TranscribeInputs
from pipelines.video.frames import (
    effective_interval,
    frame_difference,
    preprocess,
    sample_frames,
    thumbnail,
)
from pipelines.video.ingest import download
from pipelines.video.join import PreparedVideo, ScreenPart, SpeechPart
from pipelines.video.media import MediaInfo, check_media, extract_audio, probe
from pipelines.video.ocr import FrameText, OcrBackend, combine, dedupe_frames, make_backend
from pipelines.video.spec import OcrFrame, VideoConfig, VideoInputs, VideoMetadata, VideoOutputs
from pipelines.video.urls import Resolver, default_resolve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transcript:
    """What transcribing the audio gave: text, timed segments, and files to publish."""

    text: str
    segments: list[Segment]
    language: str | None = None
    files: dict[str, Path] = field(default_factory=dict)


# transcribe(wav_path, language, progress) -> Transcript; progress takes fractions of this step.
TranscribeFn = Callable[[Path, str | None, ProgressFn], Transcript]


def transcriber_from_pipeline(pipeline: Pipeline, *, job_id: str = "video") -> TranscribeFn:
    """A :data:`TranscribeFn` that runs a loaded ``transcribe`` pipeline on a local WAV file."""

    def transcribe(wav: Path, language: str | None, progress: ProgressFn) -> Transcript:
        workdir = wav.parent / "transcript"
        workdir.mkdir(exist_ok=True)
        inputs = TranscribeInputs.model_validate(
            {"media": "gs://local-video-job/audio.wav", "language": language}
        )
        ctx = RunContext(job_id=job_id, workdir=workdir, files={"media": wav}, progress=progress)
        result = pipeline.run(inputs, ctx)
        outputs = result.outputs
        return Transcript(
            text=str(outputs.text),
            segments=list(outputs.segments),
            language=getattr(outputs, "language", None),
            files=dict(result.files),
        )

    return transcribe


@dataclass(frozen=True)
class Ingested:
    """A local video ready for the parallel steps."""

    path: Path
    media: MediaInfo
    metadata: VideoMetadata
    download_info: dict[str, Any] = field(default_factory=dict)


def _scaled(progress: ProgressFn, start: float, end: float) -> ProgressFn:
    def report(fraction: float, stage: str) -> None:
        progress(start + (end - start) * min(1.0, max(0.0, fraction)), stage)

    return report


class VideoPipeline:
    """A loaded video pipeline. ``run`` may be called once per job, many times.

    Args:
        config: limits, SSRF policy and OCR settings.
        transcribe: speech to text for the extracted audio; ``None`` skips the speech (text '').
        ocr: the OCR backend.
        resolve: host name to addresses for the SSRF guard (tests pass their own).
    """

    def __init__(
        self,
        config: VideoConfig,
        *,
        transcribe: TranscribeFn | None,
        ocr: OcrBackend,
        resolve: Resolver = default_resolve,
    ) -> None:
        self.config = config
        self.transcribe = transcribe
        self.ocr = ocr
        self.resolve = resolve

    # --- step 1: ingest ------------------------------------------------------------------------

    def ingest(self, inputs: VideoInputs, ctx: RunContext, progress: ProgressFn | None = None) -> Ingested:
        """Download (for ``url``) or take the uploaded file, then probe it and enforce the limits."""
        report = progress or ctx.progress
        info: dict[str, Any] = {}
        if inputs.url is not None:
            target = ctx.workdir / "download"
            target.mkdir(parents=True, exist_ok=True)
            downloaded = download(inputs.url, target, self.config, report, resolve=self.resolve)
            path, info = downloaded.path, downloaded.info
        else:
            local = ctx.files.get("video")
            if local is None or not Path(local).is_file():
                raise PermanentError("The uploaded video was not downloaded to this service", code="internal")
            path = Path(local)
        media = probe(path, timeout=self.config.ffmpeg_timeout_seconds)
        check_media(media, self.config)
        metadata = VideoMetadata(
            title=info.get("title") or (None if inputs.url else Path(inputs.video or path.name).name),
            duration=media.duration,
            source_url=info.get("webpage_url") or inputs.url,
            extractor=info.get("extractor"),
            width=media.width,
            height=media.height,
        )
        report(1.0, "ingesting")
        return Ingested(path=path, media=media, metadata=metadata, download_info=info)

    # --- step 2a: speech -----------------------------------------------------------------------

    def speech(
        self, ingested: Ingested, workdir: Path, language: str | None, progress: ProgressFn
    ) -> Transcript:
        """Extract the audio and transcribe it (an empty transcript if there is no audio)."""
        if not ingested.media.has_audio or self.transcribe is None:
            return Transcript(text="", segments=[])
        audio_dir = workdir / "audio"
        audio_dir.mkdir(parents=True, exist_ok=True)
        wav = extract_audio(
            ingested.path, audio_dir / "audio.wav", timeout=self.config.ffmpeg_timeout_seconds
        )
        progress(0.0, "transcribing")
        return self.transcribe(wav, language, progress)

    # --- step 2b: on-screen text ---------------------------------------------------------------

    def read_screen(
        self, ingested: Ingested, interval: float | None, progress: ProgressFn
    ) -> tuple[list[OcrFrame], dict[str, Any]]:
        """Sample frames, OCR the ones that changed, merge repeats; returns entries and stats."""
        config = self.config
        step = effective_interval(
            interval or config.frame_interval_seconds, ingested.media.duration, config.max_frames
        )
        duration = ingested.media.duration
        batch_size = 16
        texts: list[FrameText] = []
        pending: list[tuple[int, Image.Image]] = []
        reuse: dict[int, int] = {}  # frame index -> index of the unchanged frame it repeats
        previous: Image.Image | None = None
        previous_index = -1
        stats = {"frames_sampled": 0, "frames_read": 0, "decode_seconds": 0.0, "ocr_seconds": 0.0}

        def flush() -> None:
            if not pending:
                return
            started = time.perf_counter()
            results = self.ocr.read([image for _, image in pending])
            stats["ocr_seconds"] += time.perf_counter() - started
            stats["frames_read"] += len(pending)
            for (index, _), text in zip(pending, results, strict=True):
                texts[index] = FrameText(time=texts[index].time, text=text)
            progress(min(1.0, texts[pending[-1][0]].time / duration) if duration else 1.0, "reading text")
            pending.clear()

        started = time.perf_counter()
        for frame in sample_frames(ingested.path, step):
            index = len(texts)
            texts.append(FrameText(time=frame.time, text=""))
            stats["frames_sampled"] += 1
            signature = thumbnail(frame.image)
            if (
                config.skip_unchanged_frames
                and previous is not None
                and frame_difference(previous, signature) <= config.unchanged_frame_threshold
            ):
                reuse[index] = previous_index
            else:
                pending.append((index, preprocess(frame.image, config.preprocess)))
                previous, previous_index = signature, index
            if len(pending) >= batch_size:
                stats["decode_seconds"] += time.perf_counter() - started
                flush()
                started = time.perf_counter()
        stats["decode_seconds"] += time.perf_counter() - started
        flush()
        for index, source in sorted(reuse.items()):
            texts[index] = FrameText(time=texts[index].time, text=texts[source].text)
        entries = dedupe_frames(texts, interval=step, duration=duration, threshold=config.dedupe_similarity)
        stats["interval_seconds"] = step
        return entries, stats

    # --- the whole job -------------------------------------------------------------------------

    def run(self, inputs: VideoInputs, ctx: RunContext) -> RunResult[VideoOutputs]:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        ingested = self.ingest(inputs, ctx, _scaled(ctx.progress, 0.0, 0.3))
        timings["ingest_seconds"] = time.perf_counter() - started

        started = time.perf_counter()
        transcript = self.speech(ingested, ctx.workdir, inputs.language, _scaled(ctx.progress, 0.3, 0.6))
        timings["speech_seconds"] = time.perf_counter() - started

        started = time.perf_counter()
        ocr, stats = self.read_screen(
            ingested, inputs.frame_interval_seconds, _scaled(ctx.progress, 0.6, 0.98)
        )
        timings["screen_seconds"] = time.perf_counter() - started

        combined = combine(transcript.text, ocr)
        outputs = VideoOutputs(
            text=transcript.text,
            segments=transcript.segments,
            ocr=ocr,
            combined_text=combined,
            metadata=ingested.metadata,
        )
        files = dict(transcript.files)
        combined_path = ctx.workdir / "video_text.txt"
        combined_path.write_text(combined + "\n", encoding="utf-8")
        files["video_text.txt"] = combined_path
        ctx.progress(1.0, "done")
        metadata: dict[str, Any] = {
            **{key: round(value, 3) for key, value in timings.items()},
            **{key: round(value, 3) if isinstance(value, float) else value for key, value in stats.items()},
            "ocr_backend": self.config.ocr_backend,
            "language": transcript.language,
        }
        log.info(
            "video %s: %.1f s of video, %d frames sampled, %d read, %d text entries",
            ctx.job_id,
            ingested.media.duration,
            stats["frames_sampled"],
            stats["frames_read"],
            len(ocr),
        )
        return RunResult(outputs=outputs, files=files, metadata=metadata)


class FannedOutVideo(VideoPipeline):
    """The video pipeline as a multi-part job: prepare (ingest, extract the audio), then the
    ``speech`` and ``screen`` parts in parallel on whichever instances are free, then a join."""

    def prepare(self, inputs: VideoInputs, ctx: RunContext) -> RunResult[PreparedVideo]:
        started = time.perf_counter()
        ingested = self.ingest(inputs, ctx, _scaled(ctx.progress, 0.0, 0.8))
        ingest_seconds = time.perf_counter() - started
        video_key = "source" + (ingested.path.suffix.lower() or ".mp4")
        files = {video_key: ingested.path}
        audio_key = None
        if ingested.media.has_audio:
            started = time.perf_counter()
            audio_key = "audio.wav"
            files[audio_key] = extract_audio(
                ingested.path, ctx.workdir / audio_key, timeout=self.config.ffmpeg_timeout_seconds
            )
            ctx.progress(1.0, "extracting audio")
        state = PreparedVideo(
            metadata=ingested.metadata,
            media=asdict(ingested.media),
            video_key=video_key,
            audio_key=audio_key,
            timings={"ingest_seconds": round(ingest_seconds, 3)},
        )
        return RunResult(outputs=state, files=files)

    def run_part(
        self, part: str, inputs: VideoInputs, ctx: RunContext, state: dict[str, Any]
    ) -> RunResult[BaseModel]:
        prepared = PreparedVideo.model_validate(state)
        if part == "speech":
            if prepared.audio_key is None or self.transcribe is None:
                return RunResult(outputs=SpeechPart(text="", segments=[]))
            ctx.progress(0.0, "transcribing")
            transcript = self.transcribe(ctx.files[prepared.audio_key], inputs.language, ctx.progress)
            outputs = SpeechPart(
                text=transcript.text, segments=transcript.segments, language=transcript.language
            )
            return RunResult(outputs=outputs, files=dict(transcript.files))
        if part == "screen":
            ingested = Ingested(
                path=Path(ctx.files[prepared.video_key]),
                media=MediaInfo(**prepared.media),
                metadata=prepared.metadata,
            )
            ocr, stats = self.read_screen(ingested, inputs.frame_interval_seconds, ctx.progress)
            ctx.progress(1.0, "reading text")
            return RunResult(outputs=ScreenPart(ocr=ocr, stats=stats))
        raise PermanentError(f"video has no part {part!r}", code="unknown_part")


def ocr_backend_for(config: VideoConfig, *, vision_client: Any = None) -> OcrBackend:
    """The OCR backend ``config`` names, built from its settings."""
    if config.ocr_backend == "vision":
        return make_backend(
            "vision",
            client=vision_client,
            language_hints=config.vision_language_hints,
            timeout=config.vision_timeout_seconds,
        )
    return make_backend(
        "tesseract",
        lang=config.tesseract_lang,
        psm=config.tesseract_psm,
        timeout=config.tesseract_timeout_seconds,
    )


def load(
    config: VideoConfig,
    *,
    transcribe: TranscribeFn | None = None,
    ocr: OcrBackend | None = None,
) -> FannedOutVideo:
    """Build the pipeline once per process (``SPEC.loader``).

    Without ``transcribe``, the Whisper model of ``config.transcribe`` is loaded here (so a
    broken model fails at start-up, not on the first job). Pass ``transcribe`` to share a loaded
    model, or to run without one in tests.
    """
    if transcribe is None:
        from pipelines.transcribe.model import load as load_transcriber

        transcribe = transcriber_from_pipeline(load_transcriber(config.transcribe))
    return FannedOutVideo(config, transcribe=transcribe, ocr=ocr or ocr_backend_for(config))


__all__ = [
    "Ingested",
    "TranscribeFn",
    "Transcript",
    "VideoPipeline",
    "load",
    "ocr_backend_for",
    "transcriber_from_pipeline",
]
