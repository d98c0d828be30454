"""Reading the text on frames (Tesseract or Cloud Vision), merging repeats, combining with speech."""

from __future__ import annotations

import difflib
import io
import itertools
import os
import re
import subprocess
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from core.errors import PermanentError, RetryableError
from pipelines.video.spec import OcrFrame

VISION_MAX_BATCH = 16  # images per BatchAnnotateImagesRequest, the API's limit
VISION_MAX_REQUEST_BYTES = 8 * 2**20  # keep each request well under the API's payload limit
_WHITESPACE = re.compile(r"\s+")
# google.rpc.Code values worth retrying: DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL,
# UNAVAILABLE.
_RETRYABLE_RPC_CODES = frozenset({4, 8, 10, 13, 14})


class OcrBackend(Protocol):
    """Reads the text in each image; returns one string per image, in order ('' for none)."""

    def read(self, images: Sequence[Image.Image]) -> list[str]: ...


class TesseractOcr:
    """Local OCR with the Tesseract command (Debian ``tesseract-ocr``), one process per image.

    The image goes to ``tesseract stdin stdout`` as PNG. The command runs with
    ``OMP_THREAD_LIMIT=1``: Tesseract's OpenMP threads make a single small frame about twice as
    slow (measured: 5 frames in 1.3 s with them, 0.67 s without, on 2 cores), and parallelism
    comes from running ``workers`` processes at once instead. (pytesseract cannot set a child's
    environment without changing this process's, hence the direct call.)

    Args:
        lang: Tesseract language(s), such as ``"eng"`` or ``"eng+deu"``.
        psm: page segmentation mode (3 = automatic, 6 = one block, 11 = sparse text).
        timeout: seconds allowed per image.
        workers: Tesseract processes at once (default: the number of CPUs).
        command: the Tesseract executable.
    """

    def __init__(
        self,
        *,
        lang: str = "eng",
        psm: int = 3,
        timeout: float = 30.0,
        workers: int | None = None,
        command: str = "tesseract",
    ) -> None:
        self.lang = lang
        self.psm = psm
        self.timeout = timeout
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.command = command
        # The child gets this process's environment (PATH, TESSDATA_PREFIX...) plus the thread cap.
        self._env = {**os.environ, "OMP_THREAD_LIMIT": "1"}

    def _read_one(self, image: Image.Image) -> str:
        cmd = [self.command, "stdin", "stdout", "-l", self.lang, "--psm", str(self.psm)]
        try:
            result = subprocess.run(
                cmd,
                input=_encode_png(image),
                capture_output=True,
                timeout=self.timeout,
                env=self._env,
                check=False,
            )
        except FileNotFoundError as exc:
            raise PermanentError(
                f"OCR is not available: the {self.command!r} command is not installed", code="internal"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise RetryableError(
                f"Tesseract took longer than {self.timeout:g} s for one frame", code="ocr_timeout"
            ) from exc
        if result.returncode != 0:
            detail = " | ".join(result.stderr.decode("utf-8", "replace").strip().splitlines()[-3:])
            raise PermanentError(
                f"Tesseract could not read a frame: {detail or 'no details'}", code="ocr_failed"
            )
        return result.stdout.decode("utf-8", "replace")

    def read(self, images: Sequence[Image.Image]) -> list[str]:
        if len(images) <= 1 or self.workers == 1:
            return [self._read_one(image) for image in images]
        with ThreadPoolExecutor(
            max_workers=min(self.workers, len(images)), thread_name_prefix="tesseract"
        ) as pool:
            return list(pool.map(self._read_one, images))


def _encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()


class CloudVisionOcr:
    """OCR with the Cloud Vision API (``TEXT_DETECTION``), in batches of at most 16 images.

    Args:
        client: a ``google.cloud.vision.ImageAnnotatorClient`` or anything with the same
            ``batch_annotate_images(*, requests=..., timeout=...)``; one is created (with the
            ambient credentials) if not given.
        language_hints: BCP-47 codes that help the recognizer, such as ``["en"]``.
        batch_size: images per request (1 to 16).
        timeout: seconds per request.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        language_hints: Sequence[str] = (),
        batch_size: int = VISION_MAX_BATCH,
        timeout: float = 60.0,
    ) -> None:
        if not 1 <= batch_size <= VISION_MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {VISION_MAX_BATCH}, got {batch_size}")
        if client is None:
            from google.cloud import vision

            client = vision.ImageAnnotatorClient()
        self.client = client
        self.language_hints = list(language_hints)
        self.batch_size = batch_size
        self.timeout = timeout

    def _request(self, content: bytes) -> Any:
        from google.cloud import vision

        context = vision.ImageContext(language_hints=self.language_hints) if self.language_hints else None
        return vision.AnnotateImageRequest(
            image=vision.Image(content=content),
            features=[vision.Feature(type_=vision.Feature.Type.TEXT_DETECTION)],
            image_context=context,
        )

    def _batches(self, contents: list[bytes]) -> list[list[bytes]]:
        batches: list[list[bytes]] = []
        current: list[bytes] = []
        size = 0
        for content in contents:
            if current and (
                len(current) >= self.batch_size or size + len(content) > VISION_MAX_REQUEST_BYTES
            ):
                batches.append(current)
                current, size = [], 0
            current.append(content)
            size += len(content)
        if current:
            batches.append(current)
        return batches

    def _call(self, requests: list[Any]) -> Any:
        from google.api_core import exceptions as gexc

        try:
            return self.client.batch_annotate_images(requests=requests, timeout=self.timeout)
        except (
            gexc.ServiceUnavailable,
            gexc.DeadlineExceeded,
            gexc.TooManyRequests,
            gexc.ResourceExhausted,
            gexc.InternalServerError,
            gexc.Aborted,
            gexc.RetryError,
        ) as exc:
            raise RetryableError(
                f"Cloud Vision is unavailable right now: {exc}", code="ocr_unavailable"
            ) from exc
        except gexc.GoogleAPICallError as exc:
            raise PermanentError(f"Cloud Vision refused the request: {exc}", code="ocr_failed") from exc

    def read(self, images: Sequence[Image.Image]) -> list[str]:
        texts: list[str] = []
        index = 0
        for batch in self._batches([_encode_png(image) for image in images]):
            requests = [self._request(content) for content in batch]
            response = self._call(requests)
            responses = list(response.responses)
            if len(responses) != len(requests):
                raise PermanentError(
                    f"Cloud Vision answered {len(responses)} results for {len(requests)} images",
                    code="ocr_failed",
                )
            for result in responses:
                texts.append(_vision_text(result, index))
                index += 1
        return texts


def _vision_text(result: Any, index: int) -> str:
    error = result.error
    if error is not None and error.code:
        message = f"Cloud Vision could not read frame {index + 1}: {error.message or 'no details'} (code {error.code})"
        if error.code in _RETRYABLE_RPC_CODES:
            raise RetryableError(message, code="ocr_unavailable")
        raise PermanentError(message, code="ocr_failed")
    if result.full_text_annotation and result.full_text_annotation.text:
        return str(result.full_text_annotation.text)
    if result.text_annotations:
        return str(result.text_annotations[0].description)
    return ""


def make_backend(name: str, **options: Any) -> OcrBackend:
    """``"tesseract"`` or ``"vision"``, built with ``options`` (the class's keyword arguments)."""
    if name == "tesseract":
        return TesseractOcr(**options)
    if name == "vision":
        return CloudVisionOcr(**options)
    raise ValueError(f"unknown OCR backend {name!r}; use 'tesseract' or 'vision'")


# --- merging and combining ---------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Whitespace collapsed to single spaces, case folded: what two readings are compared on."""
    return _WHITESPACE.sub(" ", text).strip().casefold()


def clean_text(text: str) -> str:
    """OCR output tidied for people: lines stripped, blank lines dropped, spaces collapsed."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def similar(a: str, b: str, threshold: float) -> bool:
    """Whether two normalized texts are the same reading, allowing for OCR noise."""
    if a == b:
        return True
    if not a or not b:
        return False
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= threshold


@dataclass(frozen=True)
class FrameText:
    """The OCR result of one sampled frame."""

    time: float
    text: str


def dedupe_frames(
    frames: Sequence[FrameText],
    *,
    interval: float | None = None,
    duration: float | None = None,
    threshold: float = 0.9,
) -> list[OcrFrame]:
    """Merge consecutive frames that show the same text into one entry from ``time`` to ``until``.

    Texts are compared after :func:`normalize_text`; near-duplicates (OCR noise: difflib ratio at
    least ``threshold``) count as the same, judged against the first frame of the run so slowly
    changing text does not drift into one entry. Frames without text end a run and are dropped.
    The text kept for a run is its most frequent reading (the longest, on a tie).

    Args:
        frames: OCR results in time order.
        interval: the sampling interval, so the last frame of a run counts until the next sample;
            by default the smallest gap between two frames.
        duration: the video's length; no entry runs past it.
        threshold: similarity from 0 to 1 above which two readings are merged.

    Returns:
        One :class:`~pipelines.video.OcrFrame` per stretch of unchanged text, in time order.
    """
    if interval is None:
        gaps = [b.time - a.time for a, b in itertools.pairwise(frames) if b.time > a.time]
        interval = min(gaps, default=0.0)
    step = interval
    entries: list[OcrFrame] = []
    run: list[FrameText] = []
    run_key = ""

    def close(until: float) -> None:
        if not run:
            return
        readings = Counter(clean_text(f.text) for f in run)
        best = max(readings, key=lambda text: (readings[text], len(text)))
        end = min(until, duration) if duration is not None else until
        entries.append(OcrFrame(time=run[0].time, until=round(max(end, run[0].time), 3), text=best))

    for frame in frames:
        key = normalize_text(frame.text)
        if run and key and similar(run_key, key, threshold):
            run.append(frame)
            continue
        close(min(frame.time, run[-1].time + step) if run else frame.time)
        run, run_key = ([frame], key) if key else ([], "")
    if run:
        close(run[-1].time + step)
    return entries


def _timestamp(seconds: float) -> str:
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def combine(transcript: str, ocr: Sequence[OcrFrame]) -> str:
    """One plain-text document: the transcript, then the on-screen text with its time spans.

    Either part is left out when empty; multi-line on-screen text is joined with `` / ``.
    """
    parts: list[str] = []
    if transcript.strip():
        parts.append("Transcript:\n" + transcript.strip())
    lines = [
        f"[{_timestamp(entry.time)}-{_timestamp(entry.until)}] {' / '.join(entry.text.splitlines())}"
        for entry in ocr
        if entry.text.strip()
    ]
    if lines:
        parts.append("On-screen text:\n" + "\n".join(lines))
    return "\n\n".join(parts)


__all__ = [
    "VISION_MAX_BATCH",
    "CloudVisionOcr",
    "FrameText",
    "OcrBackend",
    "TesseractOcr",
    "clean_text",
    "combine",
    "dedupe_frames",
    "make_backend",
    "normalize_text",
    "similar",
]
