"""The example plugin (plugins/cellular-automata), as the service runs it: inputs checked before any
work, one MP4 frame per generation (read back with ffprobe), progress per frame, a cancel honoured
between frames."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from core.errors import Cancelled
from core.spec import PipelineSpec, RunContext
from functions.handlers import describe
from pipelines.registry import registry


@pytest.fixture(scope="module")
def spec() -> PipelineSpec:
    return registry().specs["automaton"]


def probe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,width,height,nb_read_frames,avg_frame_rate", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    stream: dict[str, Any] = json.loads(out)["streams"][0]
    return stream


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"rule": "256"}, "a 1-D rule is a Wolfram code from 0 to 255"),
        ({"rule": "-1"}, "a 1-D rule is a Wolfram code from 0 to 255"),
        ({"rule": "B3/S23"}, "a 1-D rule is a Wolfram code"),
        ({"dimensions": 2, "rule": "B9/S23"}, "a 2-D rule is B<neighbour counts>/S<neighbour counts>"),
        ({"dimensions": 2, "rule": "B33/S2"}, "each count 0-8 at most once"),
        ({"dimensions": 2, "rule": "30"}, "such as 'B3/S23'"),
        ({"dimensions": 3}, "dimensions: Input should be 1 or 2"),
        ({"rule": "1" * 21}, "rule: String should have at most 20 characters"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"seed": 2**32}, "seed: Input should be less than or equal to 4294967295"),
        ({"width": 8}, "width: Input should be greater than or equal to 16"),
        ({"width": 2048}, "width: Input should be less than or equal to 1024"),
        ({"height": 33}, "height: Input should be a multiple of 2"),
        ({"frames": 0}, "frames: Input should be greater than or equal to 1"),
        ({"frames": 1801}, "frames: Input should be less than or equal to 1800"),
        ({"fps": 0}, "fps: Input should be greater than or equal to 1"),
        ({"fps": 61}, "fps: Input should be less than or equal to 60"),
        ({"width": 1024, "height": 1024, "frames": 100}, "at most 64,000,000"),
        ({"speed": 2}, "speed: Extra inputs are not permitted"),
        ({"width": "wide"}, "width: Input should be a valid integer"),
    ],
)
def test_each_bad_input_is_refused_with_what_to_change(
    spec: PipelineSpec, inputs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        spec.inputs.model_validate(inputs)
    assert message in describe(caught.value)


def test_rules_are_normalised(spec: PipelineSpec) -> None:
    assert spec.inputs.model_validate({"rule": "030"}).rule == "30"  # type: ignore[attr-defined]
    two_d = spec.inputs.model_validate({"dimensions": 2, "rule": "b36/s23"})
    assert two_d.rule == "B36/S23"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("dimensions", "rule"), [(1, "110"), (2, "B3/S23")])
def test_renders_one_frame_per_generation_with_progress_per_frame(
    spec: PipelineSpec, tmp_path: Path, dimensions: int, rule: str
) -> None:
    pipeline = spec.load(spec.config())
    inputs = spec.inputs.model_validate(
        {
            "dimensions": dimensions,
            "rule": rule,
            "seed": 7,
            "width": 96,
            "height": 64,
            "frames": 25,
            "fps": 12,
        }
    )
    seen: list[tuple[float, str]] = []
    result = pipeline.run(inputs, RunContext("job", tmp_path, progress=lambda f, s: seen.append((f, s))))
    video = result.files["automaton.mp4"]
    stream = probe(video)
    assert stream["codec_name"] == "h264" and stream["avg_frame_rate"] == "12/1"
    assert (stream["width"], stream["height"], int(stream["nb_read_frames"])) == (96, 64, 25)
    assert [s for _, s in seen[:25]] == [f"frame {i} of 25" for i in range(1, 26)]
    assert seen[-1] == (1.0, "encoded") and all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    assert result.uri_fields == {"video": "automaton.mp4"}
    assert 0 < result.outputs.alive < 1 and result.outputs.rule == rule


def test_the_same_seed_gives_the_same_video(spec: PipelineSpec, tmp_path: Path) -> None:
    pipeline = spec.load(spec.config())
    inputs = spec.inputs.model_validate({"width": 32, "height": 32, "frames": 5, "seed": 3})
    sizes = set()
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        result = pipeline.run(inputs, RunContext(run, tmp_path / run))
        sizes.add(result.files["automaton.mp4"].read_bytes())
    assert len(sizes) == 1


def test_rule_90_draws_a_sierpinski_triangle_from_one_cell() -> None:
    from cellular_automata.render import elementary

    first = np.zeros(9, dtype=np.uint8)
    first[4] = 1
    *_, last = elementary(90, first, 4, 4)
    assert last.tolist() == [
        [0, 0, 0, 0, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 1, 0, 0],
        [0, 1, 0, 1, 0, 1, 0, 1, 0],
    ]


def test_a_glider_moves_one_cell_diagonally_every_four_generations() -> None:
    from cellular_automata.render import life_like

    grid = np.zeros((8, 8), dtype=np.uint8)
    grid[0, 1] = grid[1, 2] = grid[2, 0] = grid[2, 1] = grid[2, 2] = 1
    frames = list(life_like("B3/S23", grid, 5))
    assert np.array_equal(frames[4], np.roll(np.roll(frames[0], 1, axis=0), 1, axis=1))


def test_a_cancel_stops_the_render_between_frames(spec: PipelineSpec, tmp_path: Path) -> None:
    pipeline = spec.load(spec.config())
    inputs = spec.inputs.model_validate({"width": 64, "height": 64, "frames": 100})
    stages: list[str] = []

    def progress(fraction: float, stage: str) -> None:
        stages.append(stage)
        if len(stages) == 10:
            raise Cancelled("cancelled by the client")

    with pytest.raises(Cancelled):
        pipeline.run(inputs, RunContext("job", tmp_path, progress=progress))
    assert stages[-1] == "frame 10 of 100" and len(stages) == 10


def test_without_ffmpeg_the_pipeline_cannot_load(spec: PipelineSpec) -> None:
    with pytest.raises(RuntimeError, match="'no-such-ffmpeg' was not found: install ffmpeg"):
        spec.load(spec.config.model_validate({"ffmpeg": "no-such-ffmpeg"}))
