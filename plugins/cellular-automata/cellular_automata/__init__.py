"""``automaton``: a cellular automaton from a rule and a seed, rendered as an MP4 on the CPU.

The cheap half (inputs, outputs, config and the spec hook): the functions validate jobs with it
without importing numpy. The renderer is :mod:`cellular_automata.render`, loaded by the service.

* ``dimensions: 1``: an elementary automaton (``rule`` is a Wolfram code, 0-255); each frame is
  one more generation, drawn as the last ``height`` generations scrolling upwards.
* ``dimensions: 2``: a Life-like automaton on a torus (``rule`` such as ``B3/S23``); each frame is
  one generation.

The first generation is random, from ``seed`` (the same seed gives the same video).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from core.spec import PipelineModel, PipelineSpec

NAME = "automaton"
MAX_CELLS = 64_000_000  # width * height * frames: bounds the work one job may ask for
_LIFE_RULE = re.compile(r"^B([0-8]*)/S([0-8]*)$")


def parse_life_rule(rule: str) -> tuple[frozenset[int], frozenset[int]]:
    """``B3/S23`` -> (birth counts, survival counts).

    Raises:
        ValueError: if ``rule`` is not of the form ``B<digits 0-8>/S<digits 0-8>``.
    """
    m = _LIFE_RULE.match(rule)
    if not m or len(set(m[1])) != len(m[1]) or len(set(m[2])) != len(m[2]):
        raise ValueError(
            f"a 2-D rule is B<neighbour counts>/S<neighbour counts>, each count 0-8 at most once, "
            f"such as 'B3/S23' (Life); got {rule[:40]!r}"
        )
    return frozenset(int(c) for c in m[1]), frozenset(int(c) for c in m[2])


class AutomatonInputs(PipelineModel):
    """``job.inputs`` of an ``automaton`` job."""

    dimensions: Literal[1, 2] = Field(1, description="1: an elementary automaton; 2: a Life-like one.")
    rule: str = Field(
        "30",
        max_length=20,
        description="1-D: a Wolfram code 0-255 (e.g. '30', '110'); 2-D: 'B3/S23' and the like.",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the random first generation.")
    width: int = Field(256, ge=16, le=1024, multiple_of=2, description="Cells across = pixels (even).")
    height: int = Field(256, ge=16, le=1024, multiple_of=2, description="Cells down = pixels (even).")
    frames: int = Field(60, ge=1, le=1800, description="Frames of video, one generation each.")
    fps: int = Field(24, ge=1, le=60, description="Frames per second of the video.")

    @model_validator(mode="after")
    def _check(self) -> AutomatonInputs:
        if self.dimensions == 1:
            if not self.rule.isdigit() or not 0 <= int(self.rule) <= 255:
                raise ValueError(f"a 1-D rule is a Wolfram code from 0 to 255, got {self.rule[:40]!r}")
            self.rule = str(int(self.rule))
        else:
            parse_life_rule(self.rule.upper())
            self.rule = self.rule.upper()
        cells = self.width * self.height * self.frames
        if cells > MAX_CELLS:
            raise ValueError(
                f"width x height x frames is {cells:,} cells; at most {MAX_CELLS:,} (fewer frames or a "
                f"smaller grid)"
            )
        return self


class AutomatonOutputs(BaseModel):
    video: str | None = Field(None, description="gs:// URI of the MP4 (H.264).")
    dimensions: int
    rule: str
    seed: int
    width: int
    height: int
    frames: int
    fps: int
    alive: float = Field(description="Fraction of live cells in the last generation.")


class AutomatonConfig(BaseModel):
    ffmpeg: str = Field("ffmpeg", description="The ffmpeg program (a name on PATH or a path).")
    crf: int = Field(18, ge=0, le=51, description="x264 quality: lower is better and larger.")
    max_cells: int = Field(
        MAX_CELLS, ge=1, le=MAX_CELLS, description="Most cells a job renders (width x height x frames)."
    )


def cells(inputs: AutomatonInputs) -> float:
    """What a job's work and its encoder's input follow: every cell of every frame."""
    return float(inputs.width * inputs.height * inputs.frames)


def specs() -> list[PipelineSpec]:
    """The plugin's entry point: the pipelines it registers (one here)."""
    from core.spec import Backoff, CostLimit, Delivery

    return [
        PipelineSpec(
            name=NAME,
            inputs=AutomatonInputs,
            outputs=AutomatonOutputs,
            config=AutomatonConfig,
            loader="cellular_automata.render:load",
            description="a 1-D or 2-D cellular automaton from a rule and a seed, as an MP4 (CPU)",
            costs=(
                CostLimit(
                    "cells",
                    "max_cells",
                    "invalid_inputs",
                    "width x height x frames",
                    measure=cells,
                    checked="functions (schema, then the declared cap); worker (schema)",
                ),
            ),
            # Renders take seconds to minutes; a failure is retried soon, and no model is needed.
            delivery=Delivery(
                mode="push",
                ack_deadline_seconds=300,
                retry_policy=Backoff(minimum_backoff_seconds=5, maximum_backoff_seconds=60),
                needs_model=False,
            ),
        )
    ]
