"""Levers: each one plans (pure, in tourniquet.domain), applies and observes (I/O), all with one signature.

Every apply and observe function takes the pass's :class:`LeverContext`: what to act on, and the objects as the
levers leave them (as the API server stored them), so observing reads nothing again. The levers are listed,
with their order, in :mod:`tourniquet.levers.registry`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tourniquet.adapters.kube import ApiError, KubeApi
from tourniquet.domain.containment import Containment
from tourniquet.models import AgentDeploymentSpec, Lever

Patch = dict[str, Any] | list[dict[str, Any]]  # a merge patch, or a JSON patch


@dataclass
class LeverObservation:
    """A lever's state on one agent, as observed after acting."""

    lever: Lever
    applied: bool
    detail: str
    holders: list[str]
    pending: bool = False  # held, but waiting (drain waits for evidence capture)
    drift: list[str] = field(default_factory=list)  # what it put back after someone undid it, this pass


@dataclass
class LeverContext:
    """One agent's pass as every lever sees it. The applies fill in the objects as stored and say what they did."""

    api: KubeApi
    namespace: str
    agent: str
    spec: AgentDeploymentSpec
    containment: Containment
    owner: dict[str, Any]
    control: dict[str, Any] | None  # the control ConfigMap: as last seen (None: read it), then as stored
    policy: dict[str, Any] | None  # the NetworkPolicy, likewise
    consumers: dict[tuple[str, str], dict[str, Any]]  # (kind, name) -> the workload, as the pass left it
    pods_left: dict[tuple[str, str], int] = field(default_factory=dict)  # a drained consumer's pods still there
    actions: list[str] = field(default_factory=list)  # what the levers did (logs, events)
    drift: dict[Lever, list[str]] = field(default_factory=dict)  # what a lever put back after someone undid it


Apply = Callable[[LeverContext], Awaitable[None]]
Observe = Callable[[LeverContext], LeverObservation]


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
