"""Which Google API errors are worth a retry: the service was unavailable, not the request wrong."""

from __future__ import annotations

from google.api_core import exceptions as gexc

TRANSIENT_GOOGLE_ERRORS: tuple[type[Exception], ...] = (
    gexc.ServiceUnavailable,
    gexc.InternalServerError,
    gexc.TooManyRequests,
    gexc.GatewayTimeout,
    gexc.DeadlineExceeded,
)
