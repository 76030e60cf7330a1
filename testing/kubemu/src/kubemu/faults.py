"""Fault injection, frozen watches and the request log, for tests."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import aiohttp.web
import attrs
import kmock
from kmock._internal import dsl, references, rendering

from kubemu.errors import status_body
from kubemu.resources import _BUILTIN_PRIORITY
from kubemu.store import _Store

if TYPE_CHECKING:
    from kubemu.errors import JSON
    from kubemu.resources import ResourceSpec


class ApiCall(NamedTuple):
    """One recorded request, as listed by :meth:`RealisticEmulator.writes`."""

    method: str
    path: str
    query: dict[str, str]
    body: Any = None


@dataclasses.dataclass(eq=False)
class FaultHandle:
    """
    An injected fault (see :meth:`RealisticEmulator.inject_fault`).

    ``hits`` counts the requests the fault answered; ``requests`` holds them; ``cancel()`` removes it
    (from another thread: ``api.call(fault.cancel)``).
    """

    verb: str
    resource: str
    status: int | None
    count: int | None
    delay: float
    hits: int = 0
    requests: list[rendering.Request] = dataclasses.field(default_factory=list)
    _root: Any = dataclasses.field(default=None, repr=False)
    _reaction: Any = dataclasses.field(default=None, repr=False)

    @property
    def remaining(self) -> float:
        return math.inf if self.count is None else max(self.count - self.hits, 0)

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.hits >= self.count

    def cancel(self) -> None:
        if self._root is not None and self._reaction is not None:
            self._root._payloads[:] = [p for p in self._root._payloads if p is not self._reaction]
        self._reaction = None

    def _admit(self, request: rendering.Request) -> bool:
        if self._reaction is None or self.exhausted:
            return False
        self.hits += 1
        self.requests.append(request)
        return True


@dataclasses.dataclass(eq=False)
class WatchFreeze:
    """
    A frozen watch (see :meth:`RealisticEmulator.freeze_watches`); ``thaw()`` delivers what was held.

    From another thread: ``api.call(freeze.thaw)``.
    """

    resource: str
    _frozen: collections.Counter[Any] = dataclasses.field(repr=False)
    _storage: Any = dataclasses.field(repr=False)
    thawed: bool = False

    def thaw(self) -> None:
        if not self.thawed:
            self.thawed = True
            self._frozen[self._storage] -= 1


_VERBS: dict[str, Any] = {
    "get": kmock.action.FETCH,
    "list": kmock.action.LIST,
    "watch": kmock.action.WATCH,
    "create": kmock.action.CREATE,
    "post": kmock.method.POST,
    "patch": kmock.method.PATCH,
    "update": kmock.method.PUT,
    "replace": kmock.method.PUT,
    "put": kmock.method.PUT,
    "delete": kmock.method.DELETE,
}


@attrs.define(kw_only=True)
class _Faults(_Store):
    """Injected faults, frozen watches and the request log."""

    @property
    def requests_served(self) -> int:
        """How many requests arrived so far; pass it as ``since=`` to :meth:`writes`."""
        return self._request_seq

    def writes(self, resource: str | references.resource | None = None, *, since: int = 0) -> list[ApiCall]:
        """
        Every non-GET request (POST/PUT/PATCH/DELETE) since request number ``since``.

        ``resource`` filters by resource (``'apps/v1/deployments'``, ``'configmaps'``, ...).
        A converged reconcile should leave ``emulator.writes(since=mark)`` empty, where
        ``mark = emulator.requests_served`` was taken before it.
        """
        wanted = kmock.resource(resource) if isinstance(resource, str) else resource
        calls = []
        for request in self._requests:
            if request.id < since or request.method in (
                kmock.method.GET,
                kmock.method.HEAD,
                kmock.method.OPTIONS,
            ):
                continue
            if wanted is not None and (request.resource is None or not wanted.check(request.resource)):
                continue
            calls.append(ApiCall(str(request.method.value), request.url.path, dict(request.params), request.data))
        return calls

    async def _react(self, request: rendering.Request, *, before_builtins: bool) -> aiohttp.web.StreamResponse | None:
        if not self._payloads:
            return None
        priorities = [payload.priorities for payload in self._payloads]
        width = max([len(p) for p in priorities] + [1])
        padded = [tuple(p) + (0,) * (width - len(p)) for p in priorities]
        builtin = _BUILTIN_PRIORITY + (0,) * (width - 1)
        order = sorted(range(len(padded)), key=lambda i: tuple(-x for x in padded[i]))
        for index in order:
            payload = self._payloads[index]
            if (padded[index] > builtin) != before_builtins or payload._disabled.is_set():
                continue
            if not self._sees(payload._source, request):
                continue
            try:
                return await payload(request)
            except rendering.ReactionMismatchError:
                payload._disabled.set()
            except NotImplementedError:
                pass
        return None

    def _sees(self, view: Any, request: rendering.Request) -> bool:
        """Whether a DSL view sees this request: ``request in view``, but without replaying history."""
        match view:
            case dsl.Root():
                return view is self
            case dsl.Filter():
                return self._sees(view._source, request) and bool(view.criteria(request))
            case dsl.Priority():
                return self._sees(view._source, request)
            case dsl.Exclusion():
                return self._sees(view._source, request) and not any(self._sees(v, request) for v in view._exclusions)
            case dsl.OrGroup():
                return any(self._sees(v, request) for v in view._sources)
            case dsl.AndGroup():
                return all(self._sees(v, request) for v in view._sources)
            case dsl.Slicer() if (
                view.s.step in (None, 1) and (view.s.start or 0) >= 0 and (view.s.stop is None or view.s.stop >= 0)
            ):
                return self._slice_sees(view, request)
            case _:
                return request in view  # KMock's own semantics (replays the history)

    def _slice_sees(self, view: dsl.Slicer, request: rendering.Request) -> bool:
        # The position of this request among those the slicer's source sees, counted incrementally.
        _, checked_upto, count, last_id, last_result = self._slice_counts.get(id(view), (view, 0, 0, -1, False))
        if last_id == request.id:
            return last_result
        first_id = self._requests[0].id if self._requests else request.id
        for past in self._requests[max(checked_upto - first_id, 0) :]:
            if past.id >= request.id:
                break
            if self._sees(view._source, past):
                count += 1
        position = count
        seen = self._sees(view._source, request)
        start = view.s.start or 0
        result = seen and position >= start and (view.s.stop is None or position < view.s.stop)
        self._slice_counts[id(view)] = (view, request.id + 1, count + (1 if seen else 0), request.id, result)
        return result

    def inject_fault(
        self,
        verb: str,
        resource: str | references.resource,
        *,
        status: int | None = 500,
        count: int | None = 1,
        delay: float = 0.0,
        name: str | None = None,
        namespace: str | None = None,
        subresource: str | None = None,
        message: str | None = None,
    ) -> FaultHandle:
        """
        Make the next ``count`` matching requests fail with ``status`` (or just be slow).

        ``verb``: ``get``, ``list``, ``watch``, ``create``, ``patch``, ``update``/``replace``,
        ``delete`` or ``*``. ``resource``: ``'apps/v1/deployments'``, ``'deployments'``,
        ``'v1/configmaps'``... ``subresource=None`` matches the main endpoint and all subresources,
        ``""`` the main endpoint only.
        The answer is a proper ``kind: Status`` (409 Conflict, 500 InternalError, 429 with
        ``Retry-After``, ...); for ``watch`` with ``status=410`` it is an ``ERROR`` event in a stream.
        ``delay`` (seconds) delays the answer; with ``status=None`` the request then succeeds
        normally. ``count=None`` never runs out. ``name`` and ``namespace`` may be globs (``web-*``).
        Failed writes change nothing. It is a KMock reaction, so it takes precedence over the emulation
        and shows up in the DSL (``emulator[...]``) like any other. From another thread (Kopf tests
        with :class:`~kubemu.server.ApiServerThread`), call it through ``api.call(...)``::

            fault = api.call(api.emulator.inject_fault, "patch", "apps/v1/deployments", subresource="scale")
        """
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        handle = FaultHandle(verb=verb, resource=str(resource), status=status, count=count, delay=delay, _root=self)
        criteria: list[Any] = [res]
        if verb not in ("*", "", None):
            try:
                criteria.append(_VERBS[verb.lower()])
            except KeyError:
                raise ValueError(f'unknown verb {verb!r}; expected one of {sorted(_VERBS)} or "*"') from None
        if name is not None:
            criteria.append(kmock.name(name))
        if namespace is not None:
            criteria.append(kmock.namespace(namespace))
        if subresource is not None:
            criteria.append(kmock.subresource(subresource or None))  # KMock: None is "no subresource"
        view = self[tuple(criteria)][handle._admit]

        def body(request: rendering.Request) -> JSON:
            assert status is not None
            target = request.name or (request.data or {}).get("metadata", {}).get("name", "")
            plural = request.resource.plural if request.resource else ""
            group = request.resource.group if request.resource else ""
            qualified = f"{plural}.{group}" if group else plural
            details: JSON = {"name": target, "kind": plural, **({"group": group} if group else {})}
            text = message
            if text is None and status == 409:
                text = (
                    f'Operation cannot be fulfilled on {qualified} "{target}": the object has been '
                    "modified; please apply your changes to the latest version and try again"
                )
            elif text is None and status == 404:
                text = f'{qualified} "{target}" not found'
            elif text is None and status == 410:
                text = "too old resource version: 1 (2)"
            return status_body(status, text, details=details)

        reaction: Any
        if status is None:

            async def slow_then_pass() -> None:
                await asyncio.sleep(delay)
                raise NotImplementedError  # fall through to the emulation

            reaction = view << slow_then_pass
        elif verb == "watch" and status == 410:

            async def expired_stream(request: rendering.Request) -> Any:
                await asyncio.sleep(delay)
                return ({"type": "ERROR", "object": body(request)},)

            reaction = view << 200 << {"Content-Type": "application/json"} << expired_stream
        else:

            async def failure(request: rendering.Request) -> JSON:
                if delay:
                    await asyncio.sleep(delay)
                return body(request)

            reaction = view << status
            if status == 429:
                reaction = reaction << {"Retry-After": "1"}
            reaction = reaction << failure
        handle._reaction = reaction
        return handle

    def freeze_watches(self, resource: str | references.resource) -> WatchFreeze:
        """
        Freeze every watch stream of ``resource``, open or opened later, until ``thaw()``.

        The streams stay open and deliver nothing: no event, no BOOKMARK, and not the end of the stream
        at ``timeoutSeconds`` either. That is a watch frozen behind a load balancer, as a client sees it
        (its connection looks healthy). Writes and reads keep working. The events are held, not lost:
        ``thaw()`` delivers them, in order, as a stuck connection that comes back does.
        """
        storage = self.spec_for(resource).storage
        self._frozen[storage] += 1
        return WatchFreeze(resource=str(resource), _frozen=self._frozen, _storage=storage)

    async def _while_frozen(self, spec: ResourceSpec) -> None:
        while self._frozen[spec.storage] > 0 and not self._closing:
            await asyncio.sleep(0.02)
