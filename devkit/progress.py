"""A progress callback for tests and rigs that run a pipeline by hand (no torch: the OpenCV and
other CPU pipelines' tests use it without loading the tiny diffusion models)."""

from __future__ import annotations


class ProgressLog:
    """A ``RunContext.progress`` that records calls and can cancel at a chosen call.

    ``cancel_at=(stage, n)`` raises :class:`~core.errors.Cancelled` on the ``n``-th call
    (1-based) reporting ``stage``, as the service does when a client asks to cancel.
    """

    def __init__(self, cancel_at: tuple[str, int] | None = None) -> None:
        self.calls: list[tuple[float, str]] = []
        self.cancel_at = cancel_at

    def __call__(self, fraction: float, stage: str) -> None:
        from core.errors import Cancelled

        self.calls.append((fraction, stage))
        if self.cancel_at is not None:
            stage_wanted, n = self.cancel_at
            if stage == stage_wanted and sum(1 for _, s in self.calls if s == stage) == n:
                raise Cancelled("cancelled by the test")

    @property
    def fractions(self) -> list[float]:
        return [f for f, _ in self.calls]

    def stages(self, stage: str) -> list[float]:
        return [f for f, s in self.calls if s == stage]
