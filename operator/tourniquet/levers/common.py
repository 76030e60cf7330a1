"""Levers: each one observes (I/O), plans (pure, in tourniquet.domain) and applies (I/O).

A lever function returns the object as the API server stored it, plus what it did, so the caller
reports observed state without reading it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tourniquet.models import Lever


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
