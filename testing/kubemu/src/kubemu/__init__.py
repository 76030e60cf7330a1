"""kubemu: a realistic Kubernetes API server in memory, for tests and for ``tourniquet sandbox``.

:class:`RealisticEmulator` is the server (see :mod:`kubemu.emulator` for what it emulates and what it does
not); :class:`ApiServerThread` runs it on loopback from synchronous code. The emulator is layered by concern,
each layer a module: :mod:`~kubemu.store` (objects and the resourceVersion), :mod:`~kubemu.faults` (fault
injection and the request log), :mod:`~kubemu.watch`, :mod:`~kubemu.crds`, :mod:`~kubemu.checks` (what a
write must pass), :mod:`~kubemu.writes`, :mod:`~kubemu.deletion`, :mod:`~kubemu.discovery` and
:mod:`~kubemu.http`; beside them, pure helpers: :mod:`~kubemu.selectors`, :mod:`~kubemu.patches`,
:mod:`~kubemu.protobuf`, :mod:`~kubemu.managedfields`, :mod:`~kubemu.openapi` and :mod:`~kubemu.crvalidate`
(custom resources against their CRD's schema and CEL rules).
"""

from __future__ import annotations

from kubemu.emulator import RealisticEmulator
from kubemu.errors import ApiError, status_body
from kubemu.faults import ApiCall, FaultHandle, WatchFreeze
from kubemu.patches import json_patch, merge_patch, strategic_merge_patch
from kubemu.selectors import LabelSelector
from kubemu.server import ApiServerThread

__all__ = [
    "ApiCall",
    "ApiError",
    "ApiServerThread",
    "FaultHandle",
    "LabelSelector",
    "RealisticEmulator",
    "WatchFreeze",
    "json_patch",
    "merge_patch",
    "status_body",
    "strategic_merge_patch",
]
