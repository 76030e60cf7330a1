"""Watch streams: resumption from a resourceVersion, bookmarks, initial events, selection changes as DELETED."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import references, rendering

from kubemu.errors import _bad_request, status_body
from kubemu.faults import _Faults
from kubemu.resources import _json_bytes
from kubemu.store import _Watch

if TYPE_CHECKING:
    from kubemu.errors import JSON
    from kubemu.resources import ResourceSpec


class _ServerList(list[Any]):
    """``RawHandler.servers``, telling the emulator when the last server goes (to end watch streams)."""

    def __init__(self, emulator: _Watching) -> None:
        super().__init__()
        self._emulator = emulator

    def append(self, server: Any) -> None:
        super().append(server)
        self._emulator._closing = False

    def remove(self, server: Any) -> None:
        super().remove(server)
        if not self:
            self._emulator.close_watches()


@attrs.define(kw_only=True)
class _Watching(_Faults):
    """Watch streams."""

    async def _stream_watch(
        self,
        request: rendering.Request,
        spec: ResourceSpec,
        namespace: str | None,
        name: str | None,
        params: Mapping[str, str],
    ) -> aiohttp.web.StreamResponse:
        labels, fields = self._selectors(spec, params)
        watch = _Watch(spec, namespace, name, labels, fields)
        since = params.get("resourceVersion") or ""
        send_initial = params.get("sendInitialEvents") == "true"
        bookmarks = params.get("allowWatchBookmarks") == "true"
        try:
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        except ValueError as e:
            raise _bad_request(f"invalid timeoutSeconds: {params['timeoutSeconds']!r}") from e

        # Compute the initial events and subscribe in one synchronous step: no gaps, no duplicates.
        initial: list[tuple[str, JSON]] = []
        expired: JSON | None = None
        if since in ("", "0") or send_initial:
            initial = [("ADDED", obj) for obj in self._iter_live(spec, namespace) if watch.wants(obj)]
            if send_initial:
                initial.append(("BOOKMARK", self._bookmark(spec, initial_end=True)))
        else:
            try:
                since_rv = int(since)
            except ValueError as e:
                raise _bad_request(f"invalid resource version: {since!r}") from e
            if since_rv < self._compacted.get(spec.storage, 0):
                expired = status_body(
                    410,
                    f"too old resource version: {since_rv} ({self._compacted[spec.storage]})",
                    reason="Expired",
                )
            else:
                for event in self._history.get(spec.storage, ()):
                    if event.rv > since_rv:
                        translated = watch.translate(event)
                        if translated is not None:
                            initial.append(translated)
        if expired is None and not self._closing:
            self._watches.setdefault(spec.storage, set()).add(watch)

        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(raw)
            await self._while_frozen(spec)
            if expired is not None:
                await response.write(_json_bytes({"type": "ERROR", "object": expired}) + b"\n")
            else:
                if initial:
                    await response.write(b"".join(self._line(spec, t, o) for t, o in initial))
                await self._pump(response, watch, timeout, bookmarks)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            self._watches.get(spec.storage, set()).discard(watch)
        return response

    async def _pump(
        self, response: aiohttp.web.StreamResponse, watch: _Watch, timeout: float | None, bookmarks: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else math.inf
        last_sent = loop.time()
        spec = watch.spec
        while not self._closing:
            if self._frozen[spec.storage] > 0:
                await self._while_frozen(spec)
                last_sent = loop.time()  # the bookmark timer restarts when the connection does
            now = loop.time()
            if now >= deadline:
                return
            wait = min(deadline - now, self.bookmark_interval if bookmarks else 3600.0)
            try:
                event = await asyncio.wait_for(watch.queue.get(), timeout=max(wait, 0.001))
            except TimeoutError:
                if bookmarks and loop.time() - last_sent >= self.bookmark_interval and loop.time() < deadline:
                    await response.write(self._line(spec, "BOOKMARK", self._bookmark(spec)))
                    last_sent = loop.time()
                continue
            if self._frozen[spec.storage] > 0:
                await self._while_frozen(spec)
            events = [event]
            while not watch.queue.empty():
                events.append(watch.queue.get_nowait())
            chunks: list[bytes] = []
            for item in events:
                if item is None:  # the end of the stream: closing, or the resource went away
                    if chunks:
                        await response.write(b"".join(chunks))
                    return
                translated = watch.translate(item)
                if translated is not None:
                    chunks.append(self._line(spec, *translated))
            if chunks:
                await response.write(b"".join(chunks))
                last_sent = loop.time()

    def _line(self, spec: ResourceSpec, event_type: str, obj: JSON) -> bytes:
        return _json_bytes({"type": event_type, "object": self._present(spec, obj)}) + b"\n"

    def _bookmark(self, spec: ResourceSpec, *, initial_end: bool = False) -> JSON:
        meta: JSON = {"resourceVersion": str(self._rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"kind": spec.kind, "apiVersion": spec.api_version, "metadata": meta}

    def open_watches(self, resource: str | references.resource | None = None) -> int:
        """How many watch streams are open (on ``resource``, if given): to wait until a client watches."""
        wanted = kmock.resource(resource) if isinstance(resource, str) else resource
        return sum(
            len(watches)
            for storage, watches in self._watches.items()
            for watch in [next(iter(watches), None)]
            if watch is not None and (wanted is None or wanted.check(watch.spec.resource) or wanted.check(storage))
        )

    def close_watches(self) -> None:
        """End every open watch stream now (the server is shutting down)."""
        self._closing = True
        for watches in self._watches.values():
            for watch in watches:
                watch.queue.put_nowait(None)
