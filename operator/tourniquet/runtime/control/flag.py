"""The control flag as the agent honours it: its state, what a ConfigMap's data means (failing closed to shadow
mode), the stricter of two states, and the files the ConfigMap is mounted as."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

ACTIVE = "active"
SHADOW = "shadow"
MODES = (ACTIVE, SHADOW)
CONTROL_MOUNT = "/etc/tourniquet/control"
MODE_KEY = "mode"
REVOKED_KEY = "revokedTools"

Source = Literal["api", "file", "default"]


@dataclass(frozen=True)
class ControlState:
    """The control flag as the agent honours it right now.

    ``source`` says where it came from: ``api`` (the watch), ``file`` (the mounted ConfigMap) or
    ``default`` (nothing seen yet, or no flag exists: active). ``error`` is set when the flag could not
    be read or understood and the state fails closed to shadow mode. ``fallback_reason`` says why the
    API is not the source, when it is not.
    """

    mode: str = ACTIVE
    revoked_tools: frozenset[str] = frozenset()
    source: Source = "default"
    observed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    error: str | None = None
    resource_version: str | None = None
    fallback_reason: str | None = None

    @property
    def shadow(self) -> bool:
        """True when write tools must not run (their calls are recorded and discarded)."""
        return self.mode != ACTIVE

    def is_revoked(self, tool: str) -> bool:
        return tool in self.revoked_tools

    def describe(self) -> str:
        """One line for logs: "shadow mode, revoked issue_refund (via api)"."""
        revoked = ", ".join(sorted(self.revoked_tools)) or "none"
        text = f"{self.mode} mode, revoked tools: {revoked} (via {self.source})"
        return f"{text}; {self.error}" if self.error else text


@runtime_checkable
class ControlSource(Protocol):
    """Anything that can say what the control flag is now (a follower, or a fixed state in tests)."""

    def state(self) -> ControlState: ...


class StaticControl:
    """A control source that never changes: for local development and tests."""

    def __init__(self, state: ControlState | None = None, **fields: Any) -> None:
        self._state = replace(state or ControlState(), **fields)
        self._lock = threading.Lock()

    def state(self) -> ControlState:
        with self._lock:
            return self._state

    def set(self, **fields: Any) -> ControlState:
        """Change the flag, e.g. ``control.set(mode="shadow")``; ``revoked_tools`` may be any iterable."""
        if "revoked_tools" in fields:
            fields["revoked_tools"] = frozenset(fields["revoked_tools"])
        with self._lock:
            self._state = replace(self._state, observed_at=datetime.now(UTC), **fields)
            return self._state


def parse_control(
    data: Mapping[str, str] | None,
    *,
    source: Source,
    resource_version: str | None = None,
    now: datetime | None = None,
) -> ControlState:
    """The control state a ConfigMap's data means; ``None`` (no ConfigMap) means active, nothing revoked.

    Fails closed: an unknown mode or a garbled revokedTools gives shadow mode with ``error`` set.
    """
    observed_at = now or datetime.now(UTC)
    if data is None:
        return ControlState(source=source, observed_at=observed_at, resource_version=resource_version)
    problems: list[str] = []
    raw_mode = data.get(MODE_KEY)
    mode = ACTIVE if raw_mode is None else str(raw_mode).strip().lower()
    if mode not in MODES:
        problems.append(f"unknown mode {str(raw_mode)[:40]!r} (expected active or shadow)")
        mode = SHADOW
    revoked: frozenset[str] = frozenset()
    raw_revoked = data.get(REVOKED_KEY)
    if raw_revoked is not None and raw_revoked.strip():
        try:
            parsed = json.loads(raw_revoked)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(t, str) for t in parsed):
            revoked = frozenset(parsed)
        else:
            problems.append(f"revokedTools is not a JSON list of tool names: {raw_revoked[:60]!r}")
            mode = SHADOW
    error = None
    if problems:
        error = "control flag unreadable, failing closed to shadow mode: " + "; ".join(problems)
    return ControlState(
        mode=mode,
        revoked_tools=revoked,
        source=source,
        observed_at=observed_at,
        error=error,
        resource_version=resource_version,
    )


def stricter(a: ControlState, b: ControlState) -> ControlState:
    """The union of two states' restrictions (shadow if either is; every tool either revokes), sourced as ``b``."""
    errors = [e for e in (a.error, b.error) if e]
    return replace(
        b,
        mode=SHADOW if a.shadow or b.shadow else ACTIVE,
        revoked_tools=a.revoked_tools | b.revoked_tools,
        error="; ".join(errors) or None,
    )


def read_mount(mount_dir: Path) -> tuple[dict[str, str] | None, str | None]:
    """The mounted ConfigMap's data (``None`` when not mounted) and a read error, if any."""
    if not mount_dir.is_dir():
        return None, None
    data: dict[str, str] = {}
    try:
        for key in (MODE_KEY, REVOKED_KEY):
            path = mount_dir / key
            if path.exists():
                data[key] = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read the mounted control flag in {mount_dir}: {exc}"
    return (data or None), None


def read_mounted_state(mount_dir: Path) -> ControlState | None:
    """The state the mounted files give, or ``None`` when nothing is mounted. Unreadable fails closed."""
    data, error = read_mount(mount_dir)
    if error:
        return ControlState(mode=SHADOW, source="file", error=f"failing closed to shadow mode: {error}")
    if data is None:
        return None
    return parse_control(data, source="file")
