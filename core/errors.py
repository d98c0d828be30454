"""The named errors a job can end with.

Every failure a pipeline, the functions or the GPU service can raise is one of these four types;
``core.contract.state_for_error`` maps each to the job state a client sees:

==================  =============  ========================================================
exception           job state      what the caller must do
==================  =============  ========================================================
``InvalidInput``    ``rejected``   nothing can fix this request: ack, tell the user why
                                   (``failed`` with its code if found while running)
``PermanentError``  ``failed``     the request was fine but cannot succeed: ack, report
``RetryableError``  (retried)      transient: nack so Pub/Sub redelivers; ``failed`` once
                                   the attempts are spent
``Cancelled``       ``cancelled``  the user asked to stop: ack, remove partial outputs
==================  =============  ========================================================
"""

from __future__ import annotations

#: The longest message a job document carries (messages are bounded so that an echoed value can
#: never push a document past Firestore's 1 MiB limit, or fill a client's screen).
MAX_MESSAGE_CHARS = 1000


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters: clients write these values."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


class JobError(Exception):
    """Base of every error that ends up on a job document as ``error``."""

    code: str = "internal"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidInput(JobError):
    """The request itself is wrong (schema, missing or foreign object, bad media)."""

    code = "invalid_input"


class PermanentError(JobError):
    """The request was valid but cannot succeed; retrying would fail the same way."""

    code = "failed"


class RetryableError(JobError):
    """A transient failure (I/O, preemption, out of GPU memory): try again later."""

    code = "transient"
    retryable = True


class OutOfGpuMemory(RetryableError):
    """CUDA ran out of memory; another instance (or a later attempt) may have room."""

    code = "gpu_out_of_memory"


class Preempted(RetryableError):
    """The worker is shutting down (SIGTERM): the job goes back to the queue at once.

    It does not count as one of the job's attempts.
    """

    code = "preempted"


class Cancelled(JobError):
    """The client set ``cancelRequested`` on the job; work stopped at a checkpoint."""

    code = "cancelled"
