"""``flaky``: a stand-in pipeline for fault-injection runs and delivery tests (loaded via PLUGINS).

It does timed steps with progress (so it can be killed or cancelled mid-run), can fail
transiently the first N times it starts or permanently, and counts its starts and completions
per job in files under ``state_dir``. Those files survive a SIGKILL of the service, which is what
lets ``make faults`` prove that no job's pipeline ran to completion twice.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from core.errors import PermanentError, RetryableError
from core.spec import PipelineModel, PipelineSpec, RunContext, RunResult


class FlakyInputs(PipelineModel):
    steps: int = Field(10, ge=1, le=10_000)
    step_seconds: float = Field(0.05, ge=0, le=10)
    fail_times: int = Field(0, ge=0, le=20, description="raise a retryable error on the first N starts")
    fail_permanently: bool = False


class FlakyOutputs(BaseModel):
    steps: int
    starts: int


class FlakyConfig(BaseModel):
    state_dir: Path = Path("/tmp/gpu-jobs-flaky")


def count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _append(path: Path, line: str) -> int:
    with path.open("a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    return count(path)


class Flaky:
    def __init__(self, config: FlakyConfig) -> None:
        self.state = config.state_dir
        self.state.mkdir(parents=True, exist_ok=True)

    def run(self, inputs: FlakyInputs, ctx: RunContext) -> RunResult[FlakyOutputs]:
        starts = _append(self.state / f"{ctx.job_id}.starts", str(os.getpid()))
        if inputs.fail_permanently:
            raise PermanentError("this job was told to fail", code="told_to_fail")
        if starts <= inputs.fail_times:
            raise RetryableError(f"transient failure {starts} of {inputs.fail_times}", code="flaky")
        for step in range(inputs.steps):
            ctx.progress(step / inputs.steps, "working")
            if inputs.step_seconds:
                import time

                time.sleep(inputs.step_seconds)
        ctx.progress(1.0, "working")
        result = ctx.workdir / "result.txt"
        result.write_text(f"{inputs.steps} steps\n")
        _append(self.state / f"{ctx.job_id}.completions", str(os.getpid()))
        return RunResult(FlakyOutputs(steps=inputs.steps, starts=starts), files={"result.txt": result})


def load(config: FlakyConfig) -> Flaky:
    return Flaky(config)


SPEC = PipelineSpec(
    name="flaky",
    inputs=FlakyInputs,
    outputs=FlakyOutputs,
    config=FlakyConfig,
    loader="devkit.flaky:load",
    description="test stand-in: timed steps, injectable transient and permanent failures",
)

# The same stand-in under a second name: a second pipeline (with its own topic and subscription)
# for bursts that mix pipelines of different speeds.
SLOW_SPEC = PipelineSpec(
    name="flakyslow",
    inputs=FlakyInputs,
    outputs=FlakyOutputs,
    config=FlakyConfig,
    loader="devkit.flaky:load",
    description="test stand-in: the flaky pipeline under a second name, run with longer steps",
)


# -- a multi-part stand-in: prepare, parts "a" and "b" in parallel, join ----------------------------


class PartsInputs(PipelineModel):
    step_seconds: float = Field(0.05, ge=0, le=10)
    steps: int = Field(10, ge=1, le=10_000)
    fail_part: str | None = None  # this part fails permanently
    flaky_part: str | None = None  # this part fails transiently on its first start


class PartsOutputs(BaseModel):
    a: str | None
    b: str | None
    prepared: str


class PartOutput(BaseModel):
    value: str


class PreparedToken(BaseModel):
    token: str


class FlakyParts:
    def __init__(self, config: FlakyConfig) -> None:
        self.state = config.state_dir
        self.state.mkdir(parents=True, exist_ok=True)

    def run(self, inputs: PartsInputs, ctx: RunContext) -> RunResult[PartsOutputs]:
        raise PermanentError("flakyparts runs as parts", code="internal")

    def prepare(self, inputs: PartsInputs, ctx: RunContext) -> RunResult[PreparedToken]:
        _append(self.state / f"{ctx.job_id}.prepare", str(os.getpid()))
        shared = ctx.workdir / "shared.txt"
        shared.write_text("shared input\n")
        return RunResult(PreparedToken(token="tok"), files={"shared.txt": shared})

    def run_part(
        self, part: str, inputs: PartsInputs, ctx: RunContext, state: dict[str, Any]
    ) -> RunResult[PartOutput]:
        starts = _append(self.state / f"{ctx.job_id}.{part}.starts", str(os.getpid()))
        if ctx.files["shared.txt"].read_text() != "shared input\n":
            raise PermanentError("the prepared file did not arrive", code="internal")
        if inputs.fail_part == part:
            raise PermanentError(f"part {part} was told to fail", code="told_to_fail")
        if inputs.flaky_part == part and starts == 1:
            raise RetryableError(f"part {part} fails once", code="flaky")
        for step in range(inputs.steps):
            ctx.progress(step / inputs.steps, f"part {part}")
            time.sleep(inputs.step_seconds)
        out = ctx.workdir / f"{part}.txt"
        out.write_text(part)
        _append(self.state / f"{ctx.job_id}.{part}.completions", str(os.getpid()))
        return RunResult(PartOutput(value=f"{part}:{state['token']}"), files={f"{part}.txt": out})


def join_parts(
    inputs: PartsInputs, state: dict[str, Any], parts: dict[str, dict[str, Any] | None]
) -> PartsOutputs:
    a, b = parts.get("a"), parts.get("b")
    return PartsOutputs(a=a["value"] if a else None, b=b["value"] if b else None, prepared=state["token"])


def load_parts(config: FlakyConfig) -> FlakyParts:
    return FlakyParts(config)


PARTS_SPEC = PipelineSpec(
    name="flakyparts",
    inputs=PartsInputs,
    outputs=PartsOutputs,
    config=FlakyConfig,
    loader="devkit.flaky:load_parts",
    parts=("a", "b"),
    join="devkit.flaky:join_parts",
    description="test stand-in for multi-part jobs: prepare, parts a and b, join",
)


def topology_with_flaky() -> Any:
    """The real topology plus the stand-ins, whose subscriptions retry quickly."""
    from infra.topology import load_topology

    topology = load_topology()
    quick = {"retry_policy": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 2}}
    topology.pipelines["flaky"] = dict(quick)
    topology.pipelines["flakyslow"] = dict(quick)
    topology.pipelines["flakyparts"] = {**quick, "parts": ["a", "b"]}
    return topology
