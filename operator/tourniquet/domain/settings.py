"""Settings read from the environment at start-up (pure): a bad value says which setting and why."""

from __future__ import annotations

from collections.abc import Mapping


def seconds_from_env(environ: Mapping[str, str], key: str, default: float) -> float:
    """A duration of 0 or more seconds; `default` when unset or empty."""
    raw = environ.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ValueError(f"{key}={raw!r} must be 0 or more")
    return value
