"""The renderer: generations with numpy, frames piped to ffmpeg (H.264 MP4, yuv420p)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cellular_automata import AutomatonConfig, AutomatonInputs, AutomatonOutputs, parse_life_rule
from core.errors import PermanentError
from core.spec import RunContext, RunResult

ALIVE, DEAD = 255, 0


def elementary(rule: int, first: np.ndarray, frames: int, height: int) -> Iterator[np.ndarray]:
    """Frames of a 1-D automaton: the last ``height`` generations, newest at the bottom."""
    table = np.array([(rule >> i) & 1 for i in range(8)], dtype=np.uint8)
    window = np.zeros((height, first.size), dtype=np.uint8)
    row = first.astype(np.uint8)
    for _ in range(frames):
        window = np.roll(window, -1, axis=0)
        window[-1] = row
        yield window
        row = table[(np.roll(row, 1) << 2) | (row << 1) | np.roll(row, -1)]


def life_like(rule: str, first: np.ndarray, frames: int) -> Iterator[np.ndarray]:
    """Frames of a 2-D automaton on a torus, one generation each."""
    birth, survive = parse_life_rule(rule)
    born = np.array([n in birth for n in range(9)])
    stays = np.array([n in survive for n in range(9)])
    grid = first.astype(bool)
    for _ in range(frames):
        yield grid
        neighbours = sum(
            np.roll(np.roll(grid, dy, axis=0), dx, axis=1).astype(np.uint8)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if dy or dx
        )
        grid = np.where(grid, stays[neighbours], born[neighbours])


class Automaton:
    def __init__(self, config: AutomatonConfig) -> None:
        ffmpeg = shutil.which(config.ffmpeg)
        if ffmpeg is None:
            raise RuntimeError(f"{config.ffmpeg!r} was not found: install ffmpeg")
        self.ffmpeg = ffmpeg
        self.crf = config.crf

    def _encoder(self, inputs: AutomatonInputs, out: Path) -> subprocess.Popen[bytes]:
        size = f"{inputs.width}x{inputs.height}"
        argv = [self.ffmpeg, "-nostdin", "-loglevel", "error", "-y"]
        argv += ["-f", "rawvideo", "-pix_fmt", "gray", "-s", size, "-framerate", str(inputs.fps), "-i", "-"]
        argv += ["-c:v", "libx264", "-preset", "veryfast", "-crf", str(self.crf), "-pix_fmt", "yuv420p"]
        argv += ["-movflags", "+faststart", str(out)]
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self, inputs: AutomatonInputs, ctx: RunContext) -> RunResult[AutomatonOutputs]:
        rng = np.random.default_rng(inputs.seed)
        if inputs.dimensions == 1:
            first = rng.integers(0, 2, inputs.width, dtype=np.uint8)
            frames = elementary(int(inputs.rule), first, inputs.frames, inputs.height)
            newest = slice(-1, None)  # the bottom row is the current generation
        else:
            first = rng.integers(0, 2, (inputs.height, inputs.width), dtype=np.uint8)
            frames = life_like(inputs.rule, first, inputs.frames)
            newest = slice(None)  # the whole grid is
        out = ctx.workdir / "automaton.mp4"
        encoder = self._encoder(inputs, out)
        assert encoder.stdin is not None and encoder.stderr is not None
        alive = 0.0
        try:
            for index, cells in enumerate(frames):
                # The cancellation checkpoint: a cancel stops the job between two frames.
                ctx.progress(index / inputs.frames, f"frame {index + 1} of {inputs.frames}")
                alive = float(cells[newest].mean())
                encoder.stdin.write(np.where(cells, ALIVE, DEAD).astype(np.uint8).tobytes())
            encoder.stdin.close()
            error = encoder.stderr.read().decode(errors="replace")
            if encoder.wait() != 0:
                raise PermanentError(
                    f"ffmpeg could not encode the video: {error[-500:]}", code="encode_failed"
                )
        except BrokenPipeError as exc:
            raise PermanentError(
                f"ffmpeg stopped while encoding: {encoder.stderr.read().decode(errors='replace')[-500:]}",
                code="encode_failed",
            ) from exc
        finally:
            if encoder.poll() is None:
                encoder.kill()
                encoder.wait()
        ctx.progress(1.0, "encoded")
        outputs = AutomatonOutputs(
            dimensions=inputs.dimensions,
            rule=inputs.rule,
            seed=inputs.seed,
            width=inputs.width,
            height=inputs.height,
            frames=inputs.frames,
            fps=inputs.fps,
            alive=round(alive, 4),
        )
        return RunResult(outputs, files={"automaton.mp4": out}, uri_fields={"video": "automaton.mp4"})


def load(config: AutomatonConfig) -> Automaton:
    return Automaton(config)
