"""One reconcile at a time per object within this operator process (per event loop)."""

from __future__ import annotations

import asyncio
import weakref

_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, ...], asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def lock_for(*key: str) -> asyncio.Lock:
    """The lock of one object, e.g. lock_for("AgentDeployment", namespace, name)."""
    per_loop = _locks.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault(key, asyncio.Lock())
