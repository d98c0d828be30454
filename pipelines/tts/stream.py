"""Streamed speech: each spoken chunk encoded on its own, in a form whose pieces concatenate.

A job with ``stream: true`` publishes every chunk as soon as it is spoken (and every chunk before
it), as ``stream/{index:05d}{ext}`` under the attempt's results prefix, and records it as a
partial item ``{index, uri, bytes, seconds}``. The pieces, in order, make one playable stream:

=========  ==========  =============================================================================
format     piece       how the pieces join
=========  ==========  =============================================================================
``pcm``    ``.pcm``    raw s16le samples: plain concatenation
``wav``    ``.wav``    the first piece starts with a RIFF/WAVE header whose sizes say "unknown"
                       (``0xFFFFFFFF``, as streaming encoders write it); every piece is s16le samples
``mp3``    ``.mp3``    whole MP3 frames, no ID3 tag or Xing header: frames concatenate
``aac``    ``.aac``    AAC-LC in ADTS frames (M4A cannot be cut); frames concatenate
=========  ==========  =============================================================================

Ogg Opus and FLAC pieces do not concatenate into one valid file, so those formats are not streamed
(``TtsInputs`` refuses ``stream`` with them). Each piece is the chunk's audio with the silence that
precedes it in the whole file (none before the first), faded in and out as the joined file is,
resampled and levelled to the job's loudness on its own; the whole file, levelled as a whole, is
still the job's result. The pieces' total length equals the whole file's (to a sample per piece
from resampling each on its own; MP3 and AAC add their encoder's priming to each piece).
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np

from core.errors import PermanentError
from pipelines.tts.audio import Audio, _ffmpeg, normalize_loudness, resample, silence

#: the formats a job can stream -> the extension of each piece
STREAM_EXTENSIONS = {"pcm": ".pcm", "wav": ".wav", "mp3": ".mp3", "aac": ".aac"}
#: ffmpeg output options of the lossy pieces
_LOSSY = {
    "mp3": ("-c:a", "libmp3lame", "-b:a", "128k", "-write_xing", "0", "-id3v2_version", "0", "-f", "mp3"),
    "aac": ("-c:a", "aac", "-b:a", "128k", "-f", "adts"),
}
#: the data and RIFF sizes of a WAV header whose length is not known yet
_UNKNOWN_SIZE = 0xFFFFFFFF


def wav_stream_header(rate: int) -> bytes:
    """A 44-byte PCM s16le mono RIFF/WAVE header with "unknown" sizes."""
    return b"".join(
        [
            b"RIFF", struct.pack("<I", _UNKNOWN_SIZE), b"WAVE",
            b"fmt ", struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16),
            b"data", struct.pack("<I", _UNKNOWN_SIZE),
        ]
    )  # fmt: skip


def piece_audio(piece: Audio, index: int, rate: int, *, gap_seconds: float, fade_seconds: float) -> Audio:
    """The chunk's share of the joined file: the gap before it (none before the first), then the
    chunk faded in and out over ``fade_seconds``."""
    out = np.asarray(piece, dtype=np.float32).copy()
    n = min(max(1, round(fade_seconds * rate)), len(out) // 2)
    if n:
        ramp = np.sin(np.linspace(0.0, np.pi / 2, n, dtype=np.float64)).astype(np.float32)
        out[:n] *= ramp
        out[len(out) - n :] *= ramp[::-1]
    if index > 0:
        out = np.concatenate([silence(gap_seconds, rate), out]).astype(np.float32)
    return out


def encode_piece(
    audio: Audio,
    rate: int,
    target_rate: int,
    fmt: str,
    index: int,
    workdir: Path,
    *,
    loudness_lufs: float,
    ceiling_dbfs: float,
) -> tuple[Path, float]:
    """Resample, level and encode one piece; returns its file and its seconds of audio.

    Raises:
        PermanentError: ``encode_failed`` (ffmpeg failed).
    """
    audio = resample(audio, rate, target_rate)
    leveled = normalize_loudness(audio, target_rate, loudness_lufs, ceiling_dbfs).audio
    dest = workdir / f"{index:05d}{STREAM_EXTENSIONS[fmt]}"
    samples = (np.clip(leveled, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    if fmt in ("pcm", "wav"):
        header = wav_stream_header(target_rate) if fmt == "wav" and index == 0 else b""
        dest.write_bytes(header + samples)
    else:
        command = [
            _ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "s16le", "-ar", str(target_rate), "-ac", "1", "-i", "pipe:0",
            *_LOSSY[fmt], str(dest),
        ]  # fmt: skip
        result = subprocess.run(command, input=samples, capture_output=True, check=False, timeout=600)
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace")[-500:]
            raise PermanentError(f"encoding a streamed {fmt} chunk failed: {detail}", code="encode_failed")
    return dest, len(leveled) / target_rate
