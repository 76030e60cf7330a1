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


async def remembered_write(
    copy: dict[str, Any] | None,
    plan: Callable[[dict[str, Any]], Patch | None],
    write: Callable[[Patch], Awaitable[dict[str, Any]]],
    read: Callable[[], Awaitable[dict[str, Any] | None]],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Write from a remembered copy without reading first: (the object as written, None). The write carries
    the copy's resourceVersion, so it fails if anyone changed the object since; then, or when the copy
    needs no write (a copy is not an observation), the object is read: (None, the object as read now)."""
    if copy is not None:
        patch = plan(copy)
        if patch is not None:
            version = (copy.get("metadata") or {}).get("resourceVersion")
            guarded: Patch
            if isinstance(patch, list):  # a JSON patch
                guarded = [*patch, {"op": "replace", "path": "/metadata/resourceVersion", "value": version}]
            else:
                guarded = {**patch, "metadata": {**(patch.get("metadata") or {}), "resourceVersion": version}}
            try:
                return await write(guarded), None
            except ApiError as error:
                if not (error.conflict or error.not_found):
                    raise
    return None, await read()
