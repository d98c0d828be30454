"""A batching stand-in pipeline whose model time is known: each call sleeps for the longest
``seconds`` of its jobs, in small steps that are checkpoints. Jobs state their work (``work``),
which is how a batched call's time is split between them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, cast

from pydantic import BaseModel, Field

from core.spec import FileInput, GsUri, PipelineModel, PipelineSpec, RunContext, RunResult

STEP = 0.02


class MeteredInputs(PipelineModel):
    # (a dict of files: an optional single file field would not be recognised as a file input)
    files: dict[str, Annotated[GsUri, FileInput(("application/octet-stream", "text/*"), 2**20)]] = Field(
        default_factory=dict
    )
    seconds: float = Field(0.1, ge=0, le=30)
    work: float = Field(1.0, gt=0, le=100)
    label: str = Field("", max_length=40)


class MeteredOutputs(BaseModel):
    label: str
    model_seconds: float


class MeteredConfig(BaseModel):
    version: str = "metered-1"


class Metered:
    def __init__(self, config: MeteredConfig) -> None:
        self.config = config

    def run(self, inputs: MeteredInputs, ctx: RunContext) -> RunResult[MeteredOutputs]:
        result = self.run_batch([(inputs, ctx)])[0]
        if isinstance(result, Exception):
            raise result
        return cast(RunResult[MeteredOutputs], result)

    def batch_key(self, inputs: MeteredInputs) -> Any:
        return 0

    def batch_work(self, inputs: MeteredInputs) -> float:
        return inputs.work

    def run_batch(self, items: list[tuple[MeteredInputs, RunContext]]) -> list[Any]:
        started = time.perf_counter()
        longest = max(i.seconds for i, _ in items)
        stopped: dict[int, Exception] = {}
        while time.perf_counter() - started < longest and len(stopped) < len(items):
            time.sleep(STEP)
            for n, (inputs, ctx) in enumerate(items):
                if n in stopped or time.perf_counter() - started >= inputs.seconds + STEP:
                    continue
                try:
                    ctx.progress(
                        min((time.perf_counter() - started) / max(inputs.seconds, 1e-9), 1.0), "working"
                    )
                except Exception as exc:  # this job's checkpoint stopped it; the others run on
                    stopped[n] = exc
        seconds = time.perf_counter() - started
        results: list[Any] = []
        for n, (inputs, ctx) in enumerate(items):
            if n in stopped:
                results.append(stopped[n])
                continue
            out = Path(ctx.workdir) / "result.txt"
            out.write_text(f"{inputs.label}\n")
            results.append(
                RunResult(
                    MeteredOutputs(label=inputs.label, model_seconds=round(seconds, 6)),
                    files={"result.txt": out},
                    metadata={"model": self.config.version, "adapters": ["none"]},
                )
            )
        return results


def load(config: MeteredConfig) -> Metered:
    return Metered(config)


SPEC = PipelineSpec(
    name="metered",
    inputs=MeteredInputs,
    outputs=MeteredOutputs,
    config=MeteredConfig,
    loader="devkit.metered:load",
    description="a batching stand-in with a known model time (cost tests)",
)
