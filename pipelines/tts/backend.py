"""What a speech backend is: the chunks it gets, the audio it returns.

The pipeline (text handling, joining, loudness, encoding) is the same for every backend; a backend
only turns chunks of a script into audio. A chunk is a run of turns, each spoken by one of the
job's speakers; a backend that speaks one voice at a time (Piper) speaks the turns one by one, a
multi-speaker model (VibeVoice) takes the chunk as one script with a reference voice per speaker.

Imports numpy only, so the functions can import the contract without any model library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

Audio = npt.NDArray[np.float32]
"""Mono float32 samples in [-1, 1] at the backend's ``sample_rate``."""


@dataclass(frozen=True)
class Turn:
    """One speaker's words: ``speaker`` indexes the job's voices (0 for a single-voice text)."""

    speaker: int
    text: str


@dataclass(frozen=True)
class Chunk:
    """A piece of the script short enough for one model call (``chars`` <= the backend's limit)."""

    turns: tuple[Turn, ...]

    @property
    def chars(self) -> int:
        return sum(len(turn.text) for turn in self.turns)

    @property
    def text(self) -> str:
        return " ".join(turn.text for turn in self.turns)


@dataclass(frozen=True)
class Voice:
    """A speaker's voice: a configured voice by name, or a reference recording (voice cloning).

    ``reference`` is a local file the service downloaded from the job's Storage input; backends
    that cannot clone reject it in :meth:`SpeechBackend.check_voices`.
    """

    name: str
    reference: Path | None = None
    label: str | None = None
    """The speaker's label in the job's text (``Speaker 3``), for messages; None: numbered from 1."""


@dataclass(frozen=True)
class ChunkRequest:
    """One chunk of one job with that job's settings, so chunks of several jobs can share a call.

    ``voices`` are the job's voices (``chunk``'s turns index them), already checked with
    :meth:`SpeechBackend.check_voices`; ``seed`` is the chunk's own (:func:`chunk_seed`), so its
    audio does not depend on the chunks it is batched with.
    """

    chunk: Chunk
    voices: tuple[Voice, ...]
    speed: float
    seed: int


def chunk_seed(seed: int, index: int) -> int:
    """A chunk's own seed: the same job seed and chunk index always give the same stream."""
    return int(np.random.SeedSequence([seed % 2**64, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


ChunkDone = Callable[[int], None]
"""Called with the number of chunks finished so far (progress; raises ``Cancelled`` to stop)."""


class SpeechBackend(Protocol):
    """A loaded text-to-speech model."""

    name: str
    """``piper``, ``vibevoice``..."""
    sample_rate: int
    max_chunk_chars: int
    """The longest chunk (in characters) the backend speaks well in one call."""
    max_batch_chunks: int
    """How many chunks go through the model in one call (1: no batching)."""
    multi_speaker: bool
    """True when one chunk may hold turns of several speakers (the model takes the whole script)."""

    def voice_names(self) -> list[str]:
        """The configured voices a job may name."""
        ...

    def check_voices(self, voices: Sequence[Voice]) -> None:
        """Raise ``InvalidInput`` for a voice this backend cannot speak, before any model work."""
        ...

    def synthesize(
        self,
        chunks: Sequence[Chunk],
        voices: Sequence[Voice],
        *,
        speed: float,
        seed: int,
        on_chunk: ChunkDone,
    ) -> list[Audio]:
        """One array per chunk, in order. Calls ``on_chunk`` as chunks finish (between batches)."""
        ...

    def speak_chunks(self, requests: Sequence[ChunkRequest]) -> list[Audio]:
        """One array per request, in order: at most ``max_batch_chunks`` requests, possibly of
        several jobs, in one model call (a backend without batching speaks them one by one).
        Each array is what the same request gives alone."""
        ...
