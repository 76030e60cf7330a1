"""Postmortems: written off the incidents' watch events, when an incident's resolution is observed, when it is
edited later, and on demand (see :mod:`tourniquet.reconcilers.postmortem`). The events come from
:func:`tourniquet.handlers.agentincidents.incident_event`; this module starts and stops the writer."""

from __future__ import annotations

from typing import Any

import kopf

from tourniquet.reconcilers.postmortem import PostmortemWriter


@kopf.on.startup()
async def start_postmortems(memo: Any, **_: Any) -> None:
    memo.postmortems = PostmortemWriter(memo.api)


@kopf.on.cleanup()
async def stop_postmortems(memo: Any, **_: Any) -> None:
    writer = getattr(memo, "postmortems", None)
    if writer is not None:
        await writer.stop()

