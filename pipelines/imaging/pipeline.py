"""What every image pipeline does around a job: validate the inputs, run one job at a time."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from core.errors import InvalidInput, PermanentError
from core.spec import RunContext, RunResult

InT = TypeVar("InT", bound=BaseModel)
OutT = TypeVar("OutT", bound=BaseModel)


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
