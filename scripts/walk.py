"""The walk of one push through the worker: which of our files it enters, how often, how often it
comes back to a file it had left.

Runs in-process, without emulators: the worker is the real one (``gpu_service``), and so is
``infra.jobs.JobStore`` with its decisions from ``core.lifecycle``; only the compare-and-set read
and write go to a dictionary instead of Firestore, and Storage and Pub/Sub are local doubles.
The pipeline is a tiny one defined here, single-run and multi-part (a prepare step and two parts,
the last of which joins the job).

An *entry* is a call into a function of our packages from a function of another of our files (the
first call of the push counts too; calls in a row into the file just entered count once); a
*return* is an entry into a file the walk had entered before.
Only the thread that handles the push is traced (the lease heartbeat runs beside it).

    .venv/bin/python -m scripts.walk            # one line per push, then the totals
    .venv/bin/python -m scripts.walk --trace    # and the sequence of files entered
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from pydantic import BaseModel

from core.contract import JobDoc, JobMessage, read_job
from core.lifecycle import Claim, Ending, described
from core.patch import DELETE, SERVER_TIME, Patch
from core.spec import Catalog, PipelineModel, PipelineSpec, RunContext, RunResult
from gpu_service.pool import ModelPool
from infra.jobs import JobStore
from infra.settings import Settings

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
OURS = ("core", "gpu_service", "infra", "pipelines", "functions", "api", "cli")


# -- a tiny pipeline ---------------------------------------------------------------------------------


class Inputs(PipelineModel):
    text: str = "walk"


class Outputs(BaseModel):
    text: str


class Config(BaseModel):
    pass


class Tiny:
    def run(self, inputs: Inputs, ctx: RunContext) -> RunResult[Outputs]:
        out = ctx.workdir / "out.txt"
        out.write_text(inputs.text)
        return RunResult(Outputs(text=inputs.text), files={"out.txt": out})

    def prepare(self, inputs: Inputs, ctx: RunContext) -> RunResult[Outputs]:
        return self.run(inputs, ctx)

    def run_part(
        self, part: str, inputs: Inputs, ctx: RunContext, state: dict[str, Any]
    ) -> RunResult[Outputs]:
        return self.run(Inputs(text=f"{part}:{inputs.text}"), ctx)


def load(config: Config) -> Tiny:
    return Tiny()


def join(inputs: Inputs, state: dict[str, Any], parts: dict[str, dict[str, Any] | None]) -> Outputs:
    return Outputs(text=" ".join(str((p or {}).get("text")) for p in parts.values()))


SINGLE = PipelineSpec(name="walk", inputs=Inputs, outputs=Outputs, config=Config, loader="scripts.walk:load")
MULTI = PipelineSpec(
    name="walkparts",
    inputs=Inputs,
    outputs=Outputs,
    config=Config,
    loader="scripts.walk:load",
    parts=("left", "right"),
    join="scripts.walk:join",
)


# -- doubles for Firestore, Storage and Pub/Sub ------------------------------------------------------


def _resolve(value: Any, now: datetime) -> Any:
    if value is SERVER_TIME:
        return now
    if isinstance(value, dict):
        return {k: _resolve(v, now) for k, v in value.items()}
    return value


class MemoryJobs(JobStore):
    """The real JobStore, its compare-and-set against a dictionary of documents."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def _cas(
        self, job_id: str, decide: Callable[[JobDoc | None], Any], also: Any = None, **unread: Any
    ) -> Any:
        # ``also`` (the owner's usage roll-up, a second document) has no place in this walk's store;
        # ``unread`` (a write against the attempt's last one, without a read): this store always reads
        data = self.docs.get(job_id)
        decision = decide(read_job(data) if data is not None else None)
        patch: Patch | None = decision.patch
        if patch and data is not None:
            out = copy.deepcopy(data)
            for path, value in patch.to_dict().items():
                *parents, leaf = path.split(".")
                node = out
                for key in parents:
                    node = node.setdefault(key, {})
                if value is DELETE:
                    node.pop(leaf, None)
                else:
                    node[leaf] = _resolve(value, datetime.now(UTC))
            self.docs[job_id] = out
        return decision.result


class MemoryBlobs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def upload(
        self, src: Path, bucket: str, name: str, content_type: str | None = None, custom_time: Any = None
    ) -> str:
        dest = self.root / bucket / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return f"gs://{bucket}/{name}"

    def download(self, uri: str, dest: Path, generation: str | None = None) -> Path:
        shutil.copyfile(self.root / uri.removeprefix("gs://"), dest)
        return dest

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        return 0


@dataclass
class MemoryBus:
    sent: list[JobMessage] = field(default_factory=list)

    def publish_job(self, message: JobMessage, topic: str | None = None) -> str:
        self.sent.append(message)
        return str(len(self.sent))


# -- the trace ---------------------------------------------------------------------------------------


def _ours(filename: str) -> str | None:
    try:
        rel = Path(filename).resolve().relative_to(REPO)
    except ValueError:
        return None
    return str(rel) if rel.parts and rel.parts[0] in OURS else None


@dataclass
class Walk:
    entered: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        return len(set(self.entered))

    @property
    def entries(self) -> int:
        return len(self.entered)

    @property
    def returns(self) -> int:
        return self.entries - self.files


@contextmanager
def tracing() -> Iterator[Walk]:
    walk = Walk()
    known: dict[str, str | None] = {}

    def ours(frame: FrameType | None) -> str | None:
        while frame is not None:
            name = frame.f_code.co_filename
            if name not in known:
                known[name] = _ours(name)
            if known[name] is not None:
                return known[name]
            frame = frame.f_back
        return None

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        callee = ours(frame)
        if callee is None or (ours(frame.f_back) == callee and walk.entered):
            return
        if known.get(frame.f_code.co_filename) is None:
            return  # a library frame called from our code: not an entry of ours
        if walk.entered and walk.entered[-1] == callee:
            return  # one visit: several calls in a row from one place into the same file
        walk.entered.append(callee)

    sys.setprofile(profile)
    try:
        yield walk
    finally:
        sys.setprofile(None)


# -- the pushes --------------------------------------------------------------------------------------


def _queue(jobs: MemoryJobs, job_id: str, pipeline: str) -> None:
    now = datetime.now(UTC)
    jobs.docs[job_id] = {
        "uid": "walker",
        "pipeline": pipeline,
        "inputs": {"text": "hello"},
        "status": "queued",
        "createdAt": now,
        "queuedAt": now,
        "updatedAt": now,
    }


@dataclass
class Step:
    label: str
    walk: Walk
    detail: str


def _described(outcome: Any) -> str:
    """What a push came to: a Claim or an Ending since the worker returns what happened (an
    ``Outcome`` with its ``detail`` before)."""
    if isinstance(outcome, Claim | Ending):
        return described(outcome)
    return str(getattr(outcome, "detail", outcome))


def walk_pushes() -> tuple[list[Step], dict[str, str]]:
    """Push a single job, then a multi-part job's own message and its two parts, each traced;
    returns the steps and each job's final status."""
    from gpu_service.worker import Worker

    root = Path(tempfile.mkdtemp(prefix="walk-"))
    settings = Settings(
        pubsub_emulator_host=None, firestore_emulator_host=None, push_auth="off", redrive=False
    )
    catalog = Catalog({SINGLE.name: SINGLE, MULTI.name: MULTI})
    jobs, bus = MemoryJobs(), MemoryBus()
    worker = Worker(settings, catalog, jobs, MemoryBlobs(root), ModelPool(catalog), bus)  # type: ignore[arg-type]
    worker.pool.get(SINGLE)  # the model is warm: the walk is the push's, not the load's
    worker.pool.get(MULTI)
    _queue(jobs, "single", SINGLE.name)
    _queue(jobs, "multi", MULTI.name)
    pushes = [
        ("single job", JobMessage(job_id="single", pipeline=SINGLE.name, uid="walker")),
        ("multi-part: prepare", JobMessage(job_id="multi", pipeline=MULTI.name, uid="walker")),
        ("multi-part: part", JobMessage(job_id="multi", pipeline=MULTI.name, part="left", uid="walker")),
        (
            "multi-part: last part",
            JobMessage(job_id="multi", pipeline=MULTI.name, part="right", uid="walker"),
        ),
    ]
    # ``process`` since the worker and its multi-part steps became one file; ``handle`` before.
    deliver = getattr(worker, "process", None) or getattr(worker, "handle")  # noqa: B009
    steps = []
    try:
        for label, message in pushes:
            with tracing() as walk:
                outcome = deliver(message)
            steps.append(Step(label, walk, _described(outcome)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return steps, {job_id: str(doc["status"]) for job_id, doc in jobs.docs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trace", action="store_true", help="print the files each push enters")
    args = parser.parse_args()
    steps, ends = walk_pushes()
    for step in steps:
        walk = step.walk
        print(
            f"{step.label:24} files {walk.files:3}  entries {walk.entries:3}  returns {walk.returns:3}  "
            f"({step.detail})"
        )
        if args.trace:
            print("    " + " > ".join(walk.entered))
    total = sum(step.walk.entries for step in steps)
    print(f"{'all four':24} entries {total:3} (jobs ended: {ends})")


if __name__ == "__main__":
    main()
