"""Video to text: the speech (transcribed) and the words shown on screen (OCR of sampled frames).

Only the spec is imported here (:mod:`pipelines.video.spec`: pydantic models and ``SPEC``, the
standard library and pydantic), so the functions can validate jobs without yt-dlp, PyAV or
Tesseract. The parts that do the work, imported by the service only:

* :mod:`pipelines.video.urls`: the SSRF guard for ``url`` inputs (standard library only);
* :mod:`pipelines.video.net`: the same guard applied to every connection yt-dlp makes;
* :mod:`pipelines.video.ingest`: download (yt-dlp), probe (ffprobe), extract the audio (ffmpeg);
* :mod:`pipelines.video.frames`: sample frames every N seconds (PyAV), optional preprocessing;
* :mod:`pipelines.video.ocr`: Tesseract or Cloud Vision OCR, merging repeated frames, and
  :func:`~pipelines.video.ocr.combine` of transcript and on-screen text;
* :mod:`pipelines.video.pipeline`: the whole sequence in one process (``SPEC.loader``).
"""

from pipelines.video.spec import (
    MAX_VIDEO_BYTES,
    SPEC,
    FramePreprocess,
    OcrFrame,
    VideoConfig,
    VideoInputs,
    VideoMetadata,
    VideoOutputs,
)

__all__ = [
    "MAX_VIDEO_BYTES",
    "SPEC",
    "FramePreprocess",
    "OcrFrame",
    "VideoConfig",
    "VideoInputs",
    "VideoMetadata",
    "VideoOutputs",
]
