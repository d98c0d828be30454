"""Audio after the model: joining pieces, resampling, loudness, peak limiting, encoding.

Loudness is ITU-R BS.1770-4 integrated loudness (:func:`loudness`: the recommendation's K-weighting
filters, designed for the rate in use, then its 400 ms gated blocks). Encoding runs the ffmpeg CLI:

=========  =====================  ===========================================================
format     file                   codec
=========  =====================  ===========================================================
``wav``    ``speech.wav``         PCM s16le in RIFF/WAVE
``mp3``    ``speech.mp3``         MP3 (libmp3lame), 128 kb/s
``opus``   ``speech.opus``        Opus (libopus) in Ogg, 64 kb/s; plays at 48 kHz (see below)
``aac``    ``speech.m4a``         AAC-LC in an MPEG-4 (M4A) container, 128 kb/s, fast start
``flac``   ``speech.flac``        FLAC, 16-bit
``pcm``    ``speech.pcm``         raw signed 16-bit little-endian mono, no header
=========  =====================  ===========================================================

AAC goes in M4A rather than ADTS because M4A carries the exact duration (and gapless padding
info) that browsers and ffprobe show; raw ADTS streams only give an estimate. Opus encodes only
at 8, 12, 16, 24 and 48 kHz and every Opus file decodes at 48 kHz (ffprobe and players show
48000), so an Opus output reports ``sample_rate`` 48000; the requested rate still sets the
encoder's bandwidth when Opus supports it, and other rates are resampled to 48 kHz first.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly, sosfilt

from core.errors import PermanentError

Audio = npt.NDArray[np.float32]

#: file name (key in the job's files) and ffmpeg output options of each format
ENCODINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "wav": ("speech.wav", ("-c:a", "pcm_s16le", "-f", "wav")),
    "mp3": ("speech.mp3", ("-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3")),
    "opus": ("speech.opus", ("-c:a", "libopus", "-b:a", "64k", "-f", "ogg")),
    "aac": ("speech.m4a", ("-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", "-f", "ipod")),
    "flac": ("speech.flac", ("-c:a", "flac", "-sample_fmt", "s16", "-f", "flac")),
    "pcm": ("speech.pcm", ("-c:a", "pcm_s16le", "-f", "s16le")),
}
#: formats whose file holds 16-bit PCM at the encoder's rate: what was written is known without
#: decoding it (the samples, rounded as the encoder rounds them)
LOSSLESS = frozenset({"wav", "flac", "pcm"})
#: LU a lossy codec is expected to take from BS.1770 loudness (it cuts the highs K-weighting
#: counts), before a job has measured it: the first encode is aimed over the target by this
CODEC_LOSS_LU = {"mp3": 0.5}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
#: BS.1770 measures in 400 ms blocks: shorter audio is measured padded with silence
_MIN_MEASURE_SECONDS = 0.4
SILENCE_LUFS = -70.0
#: BS.1770-4 gating: 400 ms blocks, each starting a quarter block after the last
_BLOCK_SECONDS, _BLOCK_STEP = 0.4, 0.25
#: the K-weighting filters' analogue parameters (centre Hz, Q, gain dB) that give the
#: recommendation's 48 kHz coefficients, and the shelf's mid-band gain exponent
_SHELF_HZ, _SHELF_Q, _SHELF_DB = 1681.974450955533, 0.7071752369554196, 3.999843853973347
_SHELF_VB_EXPONENT = 0.4996667741545416
_HIGHPASS_HZ, _HIGHPASS_Q = 38.13547087602444, 0.5003270373238773


def silence(seconds: float, rate: int) -> Audio:
    return np.zeros(round(seconds * rate), dtype=np.float32)


def crossfade(a: Audio, b: Audio, samples: int) -> Audio:
    """``a`` then ``b``, overlapping by ``samples`` with an equal-power (sine/cosine) fade, so the
    seam has neither a step nor a dip in level."""
    n = min(samples, len(a), len(b))
    if n == 0:
        return np.concatenate([a, b]).astype(np.float32)
    theta = np.linspace(0.0, np.pi / 2, n, dtype=np.float64)
    seam = a[-n:] * np.cos(theta) + b[:n] * np.sin(theta)
    return np.concatenate([a[:-n], seam.astype(np.float32), b[n:]]).astype(np.float32)


def join(pieces: list[Audio], rate: int, *, gap_seconds: float, fade_seconds: float) -> Audio:
    """The pieces in order, each seam a short silence entered and left with equal-power fades;
    the whole fades in and out at its ends, so no sample jumps anywhere."""
    fade = max(1, round(fade_seconds * rate))
    gap = silence(gap_seconds, rate)
    out = np.zeros(0, dtype=np.float32)
    for i, piece in enumerate(pieces):
        piece = np.asarray(piece, dtype=np.float32)
        if i == 0:
            out = piece
            continue
        # The silence is padded by one fade at each side so the fades run fully into it.
        bridge = np.concatenate([np.zeros(fade, np.float32), gap, np.zeros(fade, np.float32)])
        out = crossfade(crossfade(out, bridge, fade), piece, fade)
    if len(out):
        n = min(fade, len(out) // 2)
        ramp = np.sin(np.linspace(0.0, np.pi / 2, n, dtype=np.float64)).astype(np.float32)
        out = out.copy()
        out[:n] *= ramp
        out[len(out) - n :] *= ramp[::-1]
    return out


def resample(audio: Audio, rate: int, target: int) -> Audio:
    """Band-limited polyphase resampling from ``rate`` to ``target`` Hz."""
    if rate == target or not len(audio):
        return audio.astype(np.float32)
    g = math.gcd(rate, target)
    resampled = resample_poly(audio.astype(np.float64), target // g, rate // g)
    return np.asarray(resampled, dtype=np.float32)


def k_weighting(rate: int) -> npt.NDArray[np.float64]:
    """BS.1770's K-weighting at ``rate`` as second-order sections: its shelving pre-filter (+4 dB
    above ~1.7 kHz) and its RLB high-pass (~38 Hz), from their analogue parameters by the bilinear
    transform, so that at 48 kHz they are the coefficients the recommendation tabulates."""
    sections = []
    for f0, q, gain_db in ((_SHELF_HZ, _SHELF_Q, _SHELF_DB), (_HIGHPASS_HZ, _HIGHPASS_Q, None)):
        k = math.tan(math.pi * f0 / rate)
        norm = 1.0 + k / q + k * k
        a = [1.0, 2.0 * (k * k - 1.0) / norm, (1.0 - k / q + k * k) / norm]
        if gain_db is None:
            b = [1.0, -2.0, 1.0]
        else:
            vh = 10 ** (gain_db / 20)
            vb = vh**_SHELF_VB_EXPONENT
            b = [
                (vh + vb * k / q + k * k) / norm,
                2.0 * (k * k - vh) / norm,
                (vh - vb * k / q + k * k) / norm,
            ]
        sections.append(b + a)
    return np.array(sections, dtype=np.float64)


def loudness(audio: Audio, rate: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4, mono); ``SILENCE_LUFS`` for silence.

    The K-weighted signal's mean square over 400 ms blocks every 100 ms (one cumulative sum, not
    a loop over blocks); blocks under -70 LUFS, then those 10 LU under the mean of the rest, are
    left out of the mean that gives the loudness."""
    minimum = math.ceil(_MIN_MEASURE_SECONDS * rate) + 1
    if len(audio) < minimum:
        audio = np.concatenate([audio, np.zeros(minimum - len(audio), np.float32)])
    weighted = sosfilt(k_weighting(rate), np.asarray(audio, dtype=np.float64))
    energy = np.concatenate([[0.0], np.cumsum(weighted * weighted)])
    count = round((len(weighted) / rate - _BLOCK_SECONDS) / (_BLOCK_SECONDS * _BLOCK_STEP)) + 1
    starts = np.arange(count) * _BLOCK_STEP
    low = np.floor(_BLOCK_SECONDS * starts * rate).astype(np.int64)
    high = np.minimum(np.floor(_BLOCK_SECONDS * (starts + 1) * rate).astype(np.int64), len(weighted))
    mean_square = (energy[high] - energy[low]) / (_BLOCK_SECONDS * rate)
    with np.errstate(divide="ignore"):
        blocks = -0.691 + 10 * np.log10(mean_square)
    gated = blocks >= SILENCE_LUFS
    if not gated.any():
        return SILENCE_LUFS
    relative = -0.691 + 10 * math.log10(float(mean_square[gated].mean())) - 10.0
    gated &= blocks > relative
    total = float(mean_square[gated].mean()) if gated.any() else 0.0
    value = -0.691 + 10 * math.log10(total) if total > 0 else -math.inf
    return value if math.isfinite(value) and value > SILENCE_LUFS else SILENCE_LUFS


def peak_dbfs(audio: Audio) -> float:
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    return 20 * math.log10(peak) if peak > 0 else -120.0


def _moving_average(x: npt.NDArray[np.float64], width: int) -> npt.NDArray[np.float64]:
    """Mean over ``width`` samples centred on each (edges held), by a cumulative sum."""
    padded = np.pad(x, (width // 2, width - 1 - width // 2), mode="edge")
    sums: npt.NDArray[np.float64] = np.concatenate([[0.0], np.cumsum(padded)])
    averaged: npt.NDArray[np.float64] = (sums[width:] - sums[:-width]) / width
    return averaged


def limit_peaks(audio: Audio, rate: int, ceiling_dbfs: float, *, window_seconds: float = 0.005) -> Audio:
    """Smooth gain reduction so that no sample exceeds ``ceiling_dbfs``: the gain a sample needs is
    spread (a running minimum over two windows, then averaged over one), so each peak is reached
    gradually instead of clipped, and the gain at every peak is still low enough."""
    from scipy.ndimage import minimum_filter1d

    ceiling = 10 ** (ceiling_dbfs / 20)
    magnitude = np.abs(audio.astype(np.float64))
    if not len(audio) or magnitude.max() <= ceiling:
        return audio
    width = max(1, round(window_seconds * rate))
    needed = np.minimum(1.0, ceiling / np.maximum(magnitude, 1e-12))
    gain = _moving_average(minimum_filter1d(needed, size=2 * width + 1, mode="nearest"), width)
    limited = audio * gain
    return np.clip(limited, -ceiling, ceiling).astype(np.float32)


@dataclass(frozen=True)
class Leveled:
    audio: Audio
    loudness_lufs: float
    peak_dbfs: float


def normalize_loudness(
    audio: Audio, rate: int, target_lufs: float, ceiling_dbfs: float, *, measured: float | None = None
) -> Leveled:
    """Gain to ``target_lufs`` integrated loudness with peaks limited below ``ceiling_dbfs``.

    Limiting takes back some of the gain, the more the louder the target, so the gain is found
    by a secant search on the limited result's loudness (a few measurements) until it is within
    0.1 LU of the target, or as close as the ceiling allows. ``measured``: the loudness of
    ``audio`` when the caller has it already.
    """
    start = loudness(audio, rate) if measured is None else measured
    if start <= SILENCE_LUFS:
        return Leveled(audio, start, peak_dbfs(audio))

    def level(gain_db: float) -> tuple[Audio, float]:
        out = limit_peaks((audio * 10 ** (gain_db / 20)).astype(np.float32), rate, ceiling_dbfs)
        return out, loudness(out, rate)

    gain = target_lufs - start
    out, current = level(gain)
    best = (abs(current - target_lufs), out, current)
    previous: tuple[float, float] | None = None
    for _ in range(8):
        if best[0] < 0.1:
            break
        error = target_lufs - current
        slope = 1.0
        if previous is not None and gain != previous[0]:
            slope = min(1.0, max(0.05, (current - previous[1]) / (gain - previous[0])))
        previous = (gain, current)
        gain = min(gain + error / slope, target_lufs - start + 40.0)
        out, current = level(gain)
        if abs(current - target_lufs) < best[0]:
            best = (abs(current - target_lufs), out, current)
    _, out, current = best
    return Leveled(out, current, peak_dbfs(out))


def _ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise PermanentError("the ffmpeg command is not installed on this worker", code="ffmpeg_missing")
    return path


def output_rate(fmt: str, rate: int) -> int:
    """The rate a player gets from a file of ``fmt`` encoded from ``rate`` (Opus: always 48 kHz)."""
    return 48000 if fmt == "opus" else rate


def encoded_rate(fmt: str, rate: int) -> int:
    """The rate the encoder runs at: ``rate``, except Opus at a rate it cannot encode (48 kHz)."""
    return rate if fmt != "opus" or rate in OPUS_RATES else 48000


def encode(audio: Audio, rate: int, fmt: str, workdir: Path) -> Path:
    """Write ``audio`` (mono float at ``rate``) in ``fmt``; returns the file (named per ENCODINGS)."""
    name, options = ENCODINGS[fmt]
    dest = workdir / name
    pcm = np.clip(audio, -1.0, 1.0).astype("<f4").tobytes()
    command = [
        _ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "f32le", "-ar", str(rate), "-ac", "1", "-i", "pipe:0",
        *options, "-ar", str(encoded_rate(fmt, rate)), str(dest),
    ]  # fmt: skip
    result = subprocess.run(command, input=pcm, capture_output=True, check=False, timeout=600)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace")[-500:]
        raise PermanentError(f"encoding {fmt} failed: {detail}", code="encode_failed")
    return dest


def as_written(audio: Audio) -> Audio:
    """The samples a 16-bit PCM encoder writes for ``audio``, as a decoder gives them back."""
    scaled = np.rint(np.clip(audio.astype(np.float64), -1.0, 1.0) * 32768.0)
    return (np.clip(scaled, -32768, 32767) / 32768.0).astype(np.float32)


def decode(path: Path, fmt: str, rate: int) -> Audio:
    """The samples of an encoded file, mono float at ``rate`` (for measuring what was written).

    The file is this pipeline's own output, so it is decoded in this process (PyAV), without an
    ffmpeg process start per job; raw ``pcm`` is 16-bit samples at ``rate`` as they are."""
    if fmt == "pcm":
        return (np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0).astype(np.float32)
    import av

    pieces: list[Audio] = []
    try:
        with av.open(str(path), mode="r") as container:
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for frame in container.decode(stream):
                # Mono float at the rate asked for (what this pipeline writes): the samples as they are.
                as_is = (
                    frame.sample_rate == rate
                    and frame.layout.nb_channels == 1
                    and frame.format.name in _FLOAT
                )
                for out in [frame] if as_is else resampler.resample(frame):
                    pieces.append(np.asarray(out.to_ndarray(), dtype=np.float32).reshape(-1))
            for out in resampler.resample(None):
                pieces.append(np.asarray(out.to_ndarray(), dtype=np.float32).reshape(-1))
    except (av.FFmpegError, IndexError, OSError) as exc:
        raise PermanentError(f"decoding the {fmt} output failed: {exc}", code="encode_failed") from exc
    return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)


#: PyAV's names of 32-bit float samples (packed, planar): one mono plane is the samples as they are
_FLOAT = frozenset({"flt", "fltp"})
