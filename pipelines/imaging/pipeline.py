"""What every image pipeline does around a job: validate the inputs, run one job at a time, and
(for the diffusion pipelines) run same-size jobs of one batch key in one model call."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from core.errors import InvalidInput, PermanentError
from core.spec import BatchProgress, ProgressFn, RunContext, RunResult

InT = TypeVar("InT", bound=BaseModel)
OutT = TypeVar("OutT", bound=BaseModel)


class Prepared(Protocol):
    """One job checked and ready for the model: jobs of one ``work`` size can share a call."""

    @property
    def work(self) -> tuple[int, int]: ...


PrepT = TypeVar("PrepT", bound=Prepared)
ResT = TypeVar("ResT")


def input_path(ctx: RunContext, name: str) -> Path:
    """The local copy of input file ``name``.

    Raises:
        PermanentError: the service did not provide it (a wiring error, not the job's fault).
    """
    try:
        return Path(ctx.files[name])
    except KeyError:
        raise PermanentError(f"input file {name!r} was not provided to the pipeline") from None


class ImagePipeline(ABC, Generic[InT, OutT]):
    """Loaded once per process; :meth:`run` per job (one at a time).

    Subclasses set :attr:`inputs_model` and :attr:`what` (the pipeline's name in messages) and
    implement :meth:`_run`.
    """

    inputs_model: type[InT]
    what: str

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def run(self, inputs: InT, ctx: RunContext) -> RunResult[OutT]:
        inputs = self.validate(inputs)
        with self._lock:
            return self._run(inputs, ctx)

    def validate(self, inputs: InT | object) -> InT:
        """``inputs`` as the pipeline's model; :class:`~core.errors.InvalidInput` if they are not."""
        if isinstance(inputs, self.inputs_model):
            return inputs
        try:
            return self.inputs_model.model_validate(inputs)
        except ValidationError as e:
            raise InvalidInput(f"invalid {self.what} inputs: {e}") from e

    @abstractmethod
    def _run(self, inputs: InT, ctx: RunContext) -> RunResult[OutT]: ...


class BatchedImagePipeline(ImagePipeline[InT, OutT], Generic[InT, OutT, PrepT, ResT]):
    """An image pipeline whose model takes several same-size jobs in one call.

    A job is three steps: :meth:`_prepare` (every :class:`~core.errors.InvalidInput` is raised
    here, before any model work), :meth:`_call` (the model, for one or more prepared jobs of one
    work size) and :meth:`_finish` (the job's result file and outputs). :meth:`run` is the three
    for one job; :meth:`run_batch` runs them for jobs that share a batch key, one call per work
    size, and keeps each job's errors, progress and cancellation its own.
    """

    @abstractmethod
    def _prepare(self, inputs: InT, ctx: RunContext) -> PrepT: ...

    @abstractmethod
    def _call(self, batch: Sequence[PrepT], progress: ProgressFn) -> list[ResT]:
        """One model call for jobs of one work size and batch key; results in order."""

    @abstractmethod
    def _finish(self, prepared: PrepT, result: ResT, ctx: RunContext) -> RunResult[OutT]: ...

    def _run(self, inputs: InT, ctx: RunContext) -> RunResult[OutT]:
        prepared = self._prepare(inputs, ctx)
        [result] = self._call([prepared], ctx.progress)
        return self._finish(prepared, result, ctx)

    def run_batch(self, items: Sequence[tuple[Any, RunContext]]) -> list[RunResult[Any] | Exception]:
        """Several jobs, one model call per work size; each job keeps its own seed, progress,
        cancellation and errors (see :class:`~core.spec.BatchProgress`)."""
        results: list[RunResult[Any] | Exception] = [PermanentError("not run")] * len(items)
        prepared: dict[int, PrepT] = {}
        with self._lock:
            for index, (inputs, ctx) in enumerate(items):
                try:
                    prepared[index] = self._prepare(self.validate(inputs), ctx)
                except Exception as exc:  # this job's input, not its batch-mates'
                    results[index] = exc
            groups: dict[tuple[int, int], list[int]] = {}
            for index, p in prepared.items():
                groups.setdefault(p.work, []).append(index)
            for indices in groups.values():
                progress = BatchProgress([items[i][1] for i in indices])
                outs = self._call([prepared[i] for i in indices], progress.report)
                for n, index in enumerate(indices):
                    if n in progress.errors:
                        results[index] = progress.errors[n]
                        continue
                    try:
                        results[index] = self._finish(prepared[index], outs[n], items[index][1])
                    except Exception as exc:
                        results[index] = exc
        return results
