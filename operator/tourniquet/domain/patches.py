"""JSON merge patches (RFC 7386) that turn one object into another (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """`new`, plus null for every key of `old` it lacks, at any depth: in a merge patch a key left out is
    kept, so a status that drops a key (an agent's containment once no incident is open) must say so."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            patch[key] = merge_patch(before, value)
        else:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
