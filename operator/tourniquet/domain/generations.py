"""What is derived from an object's spec, kept per (uid, generation) (pure).

The API server bumps `metadata.generation` on every spec change, so a value computed from one uid and
generation's spec holds until the next change: a pass or a watch event does not parse and validate it again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PerGeneration(Generic[T]):
    """A bounded cache keyed by the object's uid and generation; the oldest entries go first. An object
    without both (a body made by hand) is derived every time."""

    def __init__(self, limit: int = 4096) -> None:
        self._values: dict[tuple[str, Any], T] = {}
        self._limit = limit

    def get(self, body: Mapping[str, Any], derive: Callable[[], T]) -> T:
        meta = body.get("metadata") or {}
        if not (meta.get("uid") and meta.get("generation")):
            return derive()
        key = (str(meta["uid"]), meta["generation"])
        if key in self._values:
            return self._values[key]
        value = derive()
        if len(self._values) >= self._limit:
            del self._values[next(iter(self._values))]
        self._values[key] = value
        return value
