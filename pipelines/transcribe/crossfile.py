"""Batching across files: the speech chunks of several jobs decoded in shared model calls.

faster-whisper's :class:`~faster_whisper.BatchedInferencePipeline` batches the chunks (VAD
segments or 30 s windows) of *one* file. Its ``transcribe`` does everything per file first (VAD,
features, language, tokenizer, options) and only decodes when its segment generator is iterated.
:class:`ChunkPlanner` keeps that per-file half unchanged and replaces the generator with a
:class:`FilePlan`: the file's chunks, waiting to be decoded. :func:`decode_plans` then runs the
chunks of all plans through ``forward`` (encoder + batched ``generate``) ``batch_size`` at a time,
whichever file they come from, and hands each chunk's output back to its plan. Each chunk is
decoded on its own features with its own prompt, so a file's transcript is what it gets alone.

This leans on two internals of faster-whisper (``_batched_segments_generator`` and ``forward``);
the version is pinned, and ``tests/unit/test_transcribe_batching.py`` compares against the
library's own path on the real model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from faster_whisper import BatchedInferencePipeline
from faster_whisper.transcribe import Segment


@dataclass
class FilePlan:
    """One file's chunks (features and where they sit in the audio), then their decoded output.

    Iterating yields the file's segments in faster-whisper's own form, as its generator would.
    """

    features: Any  # float32 [chunks, mels, frames], or [] when VAD found no speech
    tokenizer: Any
    chunks: list[dict[str, Any]]
    options: Any
    outputs: list[list[dict[str, Any]] | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.outputs = [None] * len(self.chunks)

    @property
    def key(self) -> tuple[Any, ...]:
        """Plans whose chunks may share a model call: same prompt tokens and decoding options."""
        tok = self.tokenizer
        return (tok.language_code, tok.task)

    def __iter__(self) -> Iterator[Segment]:
        number = 0
        for output in self.outputs:
            if output is None:
                raise RuntimeError("a chunk of this file was never decoded")
            for seg in output:
                number += 1
                yield Segment(
                    id=number,
                    seek=seg["seek"],
                    start=round(seg["start"], 3),
                    end=round(seg["end"], 3),
                    text=seg["text"],
                    tokens=seg["tokens"],
                    avg_logprob=seg["avg_logprob"],
                    compression_ratio=seg["compression_ratio"],
                    no_speech_prob=seg["no_speech_prob"],
                    words=None,
                    temperature=self.options.temperatures[0],
                )


class ChunkPlanner(BatchedInferencePipeline):  # type: ignore[misc]  # faster-whisper is untyped
    """One per file: ``transcribe`` returns ``(segments, info)`` as usual, but ``segments`` stays
    empty until :func:`decode_plans` has filled :attr:`plan`."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.plan: FilePlan | None = None

    def _batched_segments_generator(
        self, features: Any, tokenizer: Any, chunks_metadata: Any, batch_size: int, options: Any, log: bool
    ) -> FilePlan:
        if options.word_timestamps:
            # Word alignment carries state from chunk to chunk of one file: not batched across files.
            raise ValueError("word timestamps are not decoded across files")
        self.plan = FilePlan(features, tokenizer, list(chunks_metadata), options)
        return self.plan


def decode_plans(
    planner: ChunkPlanner,
    plans: Sequence[FilePlan],
    batch_size: int,
    after_batch: Callable[[set[int]], set[int]],
) -> None:
    """Decode the chunks of ``plans`` (one key) ``batch_size`` at a time, across files, in order.

    ``planner`` is any :class:`ChunkPlanner` on the model. ``after_batch(touched)`` is told which plans (by index) got chunks in the last call and returns
    the plans to drop (cancelled): their remaining chunks are not decoded.
    """
    import numpy as np

    queue = [(p, c) for p, plan in enumerate(plans) for c in range(len(plan.chunks))]
    dropped: set[int] = set()
    while queue:
        queue = [(p, c) for p, c in queue if p not in dropped]
        batch, queue = queue[:batch_size], queue[batch_size:]
        if not batch:
            break
        first = plans[batch[0][0]]
        features = np.stack([plans[p].features[c] for p, c in batch])
        metadata = [plans[p].chunks[c] for p, c in batch]
        outputs = planner.forward(features, first.tokenizer, metadata, first.options)
        for (p, c), output in zip(batch, outputs, strict=True):
            plans[p].outputs[c] = output
        dropped |= after_batch({p for p, _ in batch})
