"""Levers: each one observes (I/O), plans (pure, in tourniquet.domain) and applies (I/O).

A lever function returns the object as the API server stored it, plus what it did, so the caller
reports observed state without reading it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tourniquet.adapters.kube import ApiError
from tourniquet.models import Lever

Patch = dict[str, Any] | list[dict[str, Any]]  # a merge patch, or a JSON patch


@dataclass
class LeverObservation:
    """A lever's state on one agent, as observed after acting."""

    lever: Lever
    applied: bool
    detail: str
    holders: list[str]
    pending: bool = False  # held, but waiting (drain waits for evidence capture)


@dataclass
class Applied:
    """What applying a lever did: the object as stored, and the actions taken (for logs and events)."""

    obj: dict
    actions: list[str] = field(default_factory=list)


async def converge(
    observed: dict[str, Any] | None,
    plan: Callable[[dict[str, Any]], Patch | None],
    write: Callable[[Patch], Awaitable[dict[str, Any]]],
    read: Callable[[], Awaitable[dict[str, Any] | None]],
    create: Callable[[], Awaitable[tuple[dict[str, Any], bool]]],
) -> tuple[dict[str, Any], str | None]:
    """Make one object what `plan` wants: (the object as stored, "created" | "patched" | None).

    `observed` is the object as last seen (the operator's watch of it, which may be a moment behind), or None
    to read it first. A write carries the resourceVersion it was planned on, so a change by anyone since
    makes it fail (409): the object is read again and planned again."""
    if observed is None:
        observed = await read()
    for attempt in range(1, 4):
        if observed is None:
            observed, created = await create()
            if created:
                return observed, "created"
        patch = plan(observed)
        if patch is None:
            return observed, None
        try:
            return await write(_guarded(patch, (observed.get("metadata") or {}).get("resourceVersion"))), "patched"
        except ApiError as error:
            if not (error.conflict or error.not_found) or attempt == 3:
                raise
        observed = await read()
    raise AssertionError("unreachable")


def _guarded(patch: Patch, version: str | None) -> Patch:
    if isinstance(patch, list):  # a JSON patch
        return [*patch, {"op": "replace", "path": "/metadata/resourceVersion", "value": version}]
    return {**patch, "metadata": {**(patch.get("metadata") or {}), "resourceVersion": version}}
