"""The ``Prefer`` request header (RFC 7240): only its ``wait`` preference is acted on here."""

from __future__ import annotations

import math


def preferred_wait(header: str | None) -> float | None:
    """The seconds of a ``wait=N`` preference, or ``None`` when there is none (or it is not a
    number). Preferences are comma-separated, each ``token[=value]`` with ``;``-parameters;
    tokens are case-insensitive and values may be quoted. A server may ignore a preference it
    cannot read, so a malformed one is ignored, never an error; the first ``wait`` counts.
    """
    if not header:
        return None
    for preference in header.split(","):
        token, _, value = preference.split(";", 1)[0].partition("=")
        if token.strip().lower() != "wait":
            continue
        try:
            seconds = float(value.strip().strip('"'))
        except ValueError:
            return None
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None
