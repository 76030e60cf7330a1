"""Postmortems: written off the incidents' watch events, when an incident's resolution is observed, when it is
edited later, and on demand (see :mod:`tourniquet.reconcilers.postmortem`)."""

from __future__ import annotations

from typing import Any

import kopf

from tourniquet.handlers.agentdeployments import plain
from tourniquet.handlers.freshness import NOT_CANARY
from tourniquet.reconcilers.postmortem import PostmortemWriter


@kopf.on.startup()
async def start_postmortems(memo: Any, **_: Any) -> None:
    memo.postmortems = PostmortemWriter(memo.api)


@kopf.on.cleanup()
async def stop_postmortems(memo: Any, **_: Any) -> None:
    writer = getattr(memo, "postmortems", None)
    if writer is not None:
        await writer.stop()


@kopf.on.event("tourniquet.dev", "v1alpha1", "agentincidents", labels=NOT_CANARY)
async def postmortem_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    memo.postmortems.on_event(event.get("type"), body, lambda: plain(body))
