"""Frames, Tesseract, the Cloud Vision backend (against the real client's message types), merging."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.api_core import gapic_v1
from google.cloud import vision
from PIL import Image, ImageDraw

from core.errors import InvalidInput, PermanentError, RetryableError
from devkit.video_server import make_slides_video
from pipelines.video import FramePreprocess, OcrFrame, VideoConfig
from pipelines.video.frames import (
    effective_interval,
    frame_difference,
    otsu_threshold,
    preprocess,
    sample_frames,
    thumbnail,
)
from pipelines.video.ocr import (
    CloudVisionOcr,
    FrameText,
    TesseractOcr,
    combine,
    dedupe_frames,
    normalize_text,
)

SLIDES = ["PROJECT ATLAS 2024", "Release date March 15"]


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_slides_video(
        tmp_path_factory.mktemp("media") / "talk.mp4", SLIDES, "The first slide shows the project name."
    )


# --- frames ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "times"),
    [(2.0, [0.0, 2.0, 4.0, 6.0, 8.0]), (3.0, [0.0, 3.0, 6.0, 9.0]), (5.0, [0.0, 5.0]), (60.0, [0.0])],
)
def test_frames_are_sampled_every_interval(talk: Path, interval: float, times: list[float]) -> None:
    frames = list(sample_frames(talk, interval))
    assert [f.time for f in frames] == pytest.approx(times, abs=0.05)
    assert all(f.image.size == (640, 360) and f.image.mode == "RGB" for f in frames)


def test_frames_of_a_file_that_is_not_a_video(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 1000)
    with pytest.raises(InvalidInput) as caught:
        list(sample_frames(bad, 2.0))
    assert caught.value.code == "unsupported_media"


def test_the_interval_grows_to_respect_max_frames() -> None:
    assert effective_interval(2.0, 100.0, 1000) == 2.0
    assert effective_interval(2.0, 7200.0, 1800) == 4.0


def _slide(text: str, size: tuple[int, int] = (320, 90), background: str = "white") -> Image.Image:
    image = Image.new("RGB", size, background)
    ImageDraw.Draw(image).text((10, 30), text, fill="black", font_size=28)
    return image


def test_preprocess_options() -> None:
    image = _slide("Hello")
    assert preprocess(image, FramePreprocess()) is image
    gray = preprocess(image, FramePreprocess(grayscale=True, upscale=2.0))
    assert (gray.mode, gray.size) == ("L", (640, 180))
    binary = preprocess(image, FramePreprocess(threshold=True))
    assert binary.mode == "L" and {v for v, n in enumerate(binary.histogram()) if n} <= {0, 255}
    wide = Image.new("RGB", (3840, 2160), "white")
    assert preprocess(wide, FramePreprocess(max_width=1920)).size == (1920, 1080)


def test_otsu_splits_a_two_tone_image() -> None:
    image = Image.new("L", (100, 10), 40)
    image.paste(200, (50, 0, 100, 10))
    assert 40 <= otsu_threshold(image) < 200


def test_unchanged_frames_are_recognized(talk: Path) -> None:
    a, b, c = (f.image for f in list(sample_frames(talk, 2.0))[:3])  # t = 0, 2, 4: slide 1
    d = list(sample_frames(talk, 6.0))[1].image  # t = 6: slide 2
    threshold = VideoConfig().unchanged_frame_threshold
    assert frame_difference(thumbnail(a), thumbnail(b)) <= threshold  # compression noise only
    assert frame_difference(thumbnail(a), thumbnail(c)) <= threshold
    assert frame_difference(thumbnail(a), thumbnail(d)) > threshold


def test_a_small_change_counts_as_a_change() -> None:
    one, two = Image.new("RGB", (640, 360), "white"), Image.new("RGB", (640, 360), "white")
    ImageDraw.Draw(one).text((20, 320), "Slide 1", fill="gray", font_size=24)
    ImageDraw.Draw(two).text((20, 320), "Slide 2", fill="gray", font_size=24)
    assert frame_difference(thumbnail(one), thumbnail(two)) > VideoConfig().unchanged_frame_threshold
    assert frame_difference(thumbnail(one), thumbnail(one.copy())) == 0


# --- Tesseract ---------------------------------------------------------------------------------


def test_tesseract_reads_the_burned_in_text(talk: Path) -> None:
    frames = list(sample_frames(talk, 2.0))
    texts = TesseractOcr(lang="eng", psm=3).read([f.image for f in frames])
    assert len(texts) == len(frames) == 5
    assert [normalize_text(t) for t in texts[:3]] == ["project atlas 2024"] * 3
    assert [normalize_text(t) for t in texts[3:]] == ["release date march 15"] * 2

    entries = dedupe_frames([FrameText(f.time, t) for f, t in zip(frames, texts, strict=True)], interval=2.0)
    assert [(e.time, e.until, e.text) for e in entries] == [
        (0.0, 6.0, "PROJECT ATLAS 2024"),
        (6.0, 10.0, "Release date March 15"),
    ]


def test_tesseract_reads_nothing_from_a_blank_frame() -> None:
    assert TesseractOcr(workers=1).read([Image.new("RGB", (200, 100), "white")]) == [""]
    assert TesseractOcr().read([]) == []


def test_tesseract_errors_are_job_errors() -> None:
    with pytest.raises(PermanentError) as caught:
        TesseractOcr(lang="no-such-language").read([_slide("x")])
    assert caught.value.code == "ocr_failed"
    assert "no-such-language" in caught.value.message
    with pytest.raises(PermanentError) as missing:
        TesseractOcr(command="/nonexistent/tesseract").read([_slide("x")])
    assert missing.value.code == "internal"
    with pytest.raises(RetryableError) as slow:
        TesseractOcr(timeout=0.001).read([_slide("x")])
    assert slow.value.code == "ocr_timeout"


# --- merging -----------------------------------------------------------------------------------


def _frames(*texts: str, step: float = 2.0) -> list[FrameText]:
    return [FrameText(time=i * step, text=t) for i, t in enumerate(texts)]


def test_dedupe_merges_equal_text_ignoring_case_and_whitespace() -> None:
    entries = dedupe_frames(_frames("Hello  World\n", "hello world", "HELLO\nWORLD", "Next"), interval=2.0)
    assert entries == [
        OcrFrame(time=0.0, until=6.0, text="Hello World"),
        OcrFrame(time=6.0, until=8.0, text="Next"),
    ]


def test_dedupe_merges_near_duplicates_from_ocr_noise() -> None:
    noisy = [
        "Release date March 15",
        "Release date March 15",
        "Re1ease date March 15",
        "Release date Narch 15",
    ]
    entries = dedupe_frames(_frames(*noisy), interval=2.0)
    assert entries == [OcrFrame(time=0.0, until=8.0, text="Release date March 15")]  # the common reading


def test_dedupe_keeps_different_slides_apart() -> None:
    entries = dedupe_frames(
        _frames("Slide one: goals", "Slide two: budget", "Slide one: goals"), interval=2.0
    )
    assert [e.text for e in entries] == ["Slide one: goals", "Slide two: budget", "Slide one: goals"]


def test_dedupe_threshold() -> None:
    frames = _frames("Quarterly results 2024", "Quarterly results 2025")
    assert len(dedupe_frames(frames, interval=2.0, threshold=0.9)) == 1
    assert len(dedupe_frames(frames, interval=2.0, threshold=0.99)) == 2


def test_frames_without_text_end_an_entry_and_are_dropped() -> None:
    entries = dedupe_frames(_frames("Title", "", "  \n", "Title", "Title"), interval=2.0, duration=9.0)
    assert entries == [
        OcrFrame(time=0.0, until=2.0, text="Title"),
        OcrFrame(time=6.0, until=9.0, text="Title"),  # capped at the video's length
    ]
    assert dedupe_frames(_frames("", ""), interval=2.0) == []
    assert dedupe_frames([], interval=2.0) == []


def test_dedupe_infers_the_interval() -> None:
    entries = dedupe_frames(_frames("A", "A", "B", step=0.5))
    assert entries == [OcrFrame(time=0.0, until=1.0, text="A"), OcrFrame(time=1.0, until=1.5, text="B")]


def test_combine() -> None:
    ocr = [
        OcrFrame(time=0.0, until=6.0, text="PROJECT ATLAS\n2024"),
        OcrFrame(time=3725.0, until=3730.0, text="Thanks"),
    ]
    assert combine("  Hello there.  ", ocr) == (
        "Transcript:\nHello there.\n\n"
        "On-screen text:\n[00:00-00:06] PROJECT ATLAS / 2024\n[1:02:05-1:02:10] Thanks"
    )
    assert combine("", ocr).startswith("On-screen text:")
    assert combine("Only speech.", []) == "Transcript:\nOnly speech."
    assert combine("", []) == ""


# --- Cloud Vision, against the real client's types -----------------------------------------------


class FakeVisionClient:
    """Has the real ``ImageAnnotatorClient.batch_annotate_images`` signature; answers with real
    ``BatchAnnotateImagesResponse`` messages built by ``answer(request_index, image) -> response``."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[list[vision.AnnotateImageRequest]] = []
        self.timeouts: list[Any] = []

    def batch_annotate_images(
        self,
        request: vision.BatchAnnotateImagesRequest | dict[str, Any] | None = None,
        *,
        requests: Sequence[vision.AnnotateImageRequest] | None = None,
        retry: Any = gapic_v1.method.DEFAULT,
        timeout: float | object = gapic_v1.method.DEFAULT,
        metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> vision.BatchAnnotateImagesResponse:
        assert request is None and requests is not None  # the flattened form, as the real client takes
        # What the real client does first: build the request message (it validates the types).
        message = vision.BatchAnnotateImagesRequest(requests=requests)
        batch = list(message.requests)
        self.calls.append(batch)
        self.timeouts.append(timeout)
        offset = sum(len(c) for c in self.calls[:-1])
        return vision.BatchAnnotateImagesResponse(
            responses=[self.answer(offset + i, req) for i, req in enumerate(batch)]
        )


def text_response(text: str) -> vision.AnnotateImageResponse:
    words = text.split()
    return vision.AnnotateImageResponse(
        text_annotations=[vision.EntityAnnotation(description=text, locale="en")]
        + [vision.EntityAnnotation(description=w) for w in words],
        full_text_annotation=vision.TextAnnotation(
            text=text + "\n",
            pages=[vision.Page(width=640, height=360, confidence=0.98)],
        ),
    )


def _numbered_images(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (32, 16), (i, i, i)) for i in range(count)]


def _pixel(request: vision.AnnotateImageRequest) -> int:
    image = Image.open(io.BytesIO(request.image.content))
    assert image.format == "PNG"
    value: int = image.convert("L").getpixel((0, 0))  # type: ignore[assignment]
    return value


def test_vision_sends_real_text_detection_requests_in_batches_of_16() -> None:
    client = FakeVisionClient(lambda i, req: text_response(f"frame {_pixel(req)}"))
    ocr = CloudVisionOcr(client, language_hints=["en"], timeout=12.0)
    texts = ocr.read(_numbered_images(40))

    assert texts == [f"frame {i}\n" for i in range(40)]
    assert [len(batch) for batch in client.calls] == [16, 16, 8]
    assert client.timeouts == [12.0, 12.0, 12.0]
    for batch in client.calls:
        for req in batch:
            assert isinstance(req, vision.AnnotateImageRequest)
            assert [f.type_ for f in req.features] == [vision.Feature.Type.TEXT_DETECTION]
            assert list(req.image_context.language_hints) == ["en"]
            assert not req.image.source.image_uri  # the bytes are sent, nothing is fetched by URL


def test_vision_uses_the_text_annotations_when_there_is_no_full_text() -> None:
    only_entities = vision.AnnotateImageResponse(
        text_annotations=[vision.EntityAnnotation(description="EXIT")]
    )
    nothing = vision.AnnotateImageResponse()
    answers = [text_response("Hello"), only_entities, nothing]
    client = FakeVisionClient(lambda i, req: answers[i])
    assert CloudVisionOcr(client, batch_size=2).read(_numbered_images(3)) == ["Hello\n", "EXIT", ""]
    assert [len(batch) for batch in client.calls] == [2, 1]
    assert not client.calls[0][0].image_context.language_hints


@pytest.mark.parametrize(
    ("code", "error", "job_code"),
    [
        (3, PermanentError, "ocr_failed"),  # INVALID_ARGUMENT: "Bad image data"
        (7, PermanentError, "ocr_failed"),  # PERMISSION_DENIED
        (14, RetryableError, "ocr_unavailable"),  # UNAVAILABLE
        (8, RetryableError, "ocr_unavailable"),  # RESOURCE_EXHAUSTED
    ],
)
def test_an_error_in_one_images_response_is_a_clear_job_error(
    code: int, error: type[Exception], job_code: str
) -> None:
    def answer(i: int, req: vision.AnnotateImageRequest) -> vision.AnnotateImageResponse:
        if i == 17:
            return vision.AnnotateImageResponse(error={"code": code, "message": "Bad image data."})
        return text_response("ok")

    with pytest.raises(error) as caught:
        CloudVisionOcr(FakeVisionClient(answer)).read(_numbered_images(20))
    assert caught.value.code == job_code  # type: ignore[attr-defined]
    assert "frame 18" in str(caught.value) and "Bad image data." in str(caught.value)
    assert f"code {code}" in str(caught.value)


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (gexc.ServiceUnavailable("try later"), RetryableError),
        (gexc.DeadlineExceeded("slow"), RetryableError),
        (gexc.TooManyRequests("quota"), RetryableError),
        (gexc.PermissionDenied("Cloud Vision API has not been used in project"), PermanentError),
        (gexc.InvalidArgument("Request payload size exceeds the limit"), PermanentError),
    ],
)
def test_api_call_errors_are_job_errors(exc: Exception, error: type[Exception]) -> None:
    def answer(i: int, req: vision.AnnotateImageRequest) -> vision.AnnotateImageResponse:
        raise exc

    with pytest.raises(error):
        CloudVisionOcr(FakeVisionClient(answer)).read(_numbered_images(1))


def test_a_short_response_is_an_error() -> None:
    class Short(FakeVisionClient):
        def batch_annotate_images(
            self, request: Any = None, **kwargs: Any
        ) -> vision.BatchAnnotateImagesResponse:
            super().batch_annotate_images(request, **kwargs)
            return vision.BatchAnnotateImagesResponse(responses=[text_response("only one")])

    with pytest.raises(PermanentError, match="1 results for 2 images"):
        CloudVisionOcr(Short(lambda i, r: text_response(""))).read(_numbered_images(2))


def test_vision_batch_size_is_limited_to_16() -> None:
    with pytest.raises(ValueError):
        CloudVisionOcr(FakeVisionClient(lambda i, r: text_response("")), batch_size=17)
