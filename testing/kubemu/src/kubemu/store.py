"""The store: objects by resource and key, the global resourceVersion, reads, lists and the event history."""

from __future__ import annotations

import asyncio
import base64
import bisect
import collections
import dataclasses
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import kmock
from kmock._internal import k8s_dicts, references

from kubemu.errors import _bad_request, _endpoint_not_found, _not_found
from kubemu.patches import _clone
from kubemu.resources import (
    BUILTIN_SCALABLE,
    DEFAULT_NAMESPACES,
    FIELD_SELECTORS,
    ResourceSpec,
    ScalePaths,
    _now,
    _resource,
)
from kubemu.selectors import LabelSelector, _FieldSelector, _get_path

if TYPE_CHECKING:
    from kubemu.errors import JSON
    from kubemu.resources import _CustomVersion


class _KeySet(dict[tuple[str | None, str], None]):
    """One resource's stored (namespace, name) keys, with each namespace's names kept sorted.

    Lists walk one namespace in name order without sorting every key of the resource per request.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_namespace: dict[str | None, list[str]] = {}

    def __setitem__(self, key: tuple[str | None, str], value: None) -> None:
        if key not in self:
            bisect.insort(self.by_namespace.setdefault(key[0], []), key[1])
        super().__setitem__(key, value)

    def pop(self, key: tuple[str | None, str], default: Any = None) -> Any:
        if key in self:
            names = self.by_namespace[key[0]]
            del names[bisect.bisect_left(names, key[1])]
            if not names:
                del self.by_namespace[key[0]]
        return super().pop(key, default)

    def __delitem__(self, key: tuple[str | None, str]) -> None:
        self.pop(key)

    def clear(self) -> None:
        super().clear()
        self.by_namespace.clear()

    def sorted_keys(self, namespace: str | None, *, every_namespace: bool) -> Iterator[tuple[str | None, str]]:
        """Keys in (namespace, name) order: of one namespace, or of all when `every_namespace`."""
        if not every_namespace:
            for name in list(self.by_namespace.get(namespace, ())):
                yield namespace, name
            return
        for ns in sorted(self.by_namespace, key=lambda n: n or ""):
            for name in list(self.by_namespace[ns]):
                yield ns, name


@dataclasses.dataclass(eq=False)
class _Event:
    rv: int
    type: str
    obj: JSON
    old: JSON | None = None


def _latest(stored: k8s_dicts.Object) -> JSON | None:
    """The latest version of a stored object, without the copies KMock's public accessors make."""
    try:  # KMock 0.8 internals (the version is pinned): this is the hot path of every read
        items = stored.history._ObjectHistory__items  # type: ignore[attr-defined]
        latest = items[-1] if items else None
        return None if latest is None else latest._ObjectVersion__value
    except AttributeError:  # pragma: no cover  # a newer KMock: correct, only slower
        return None if stored.deleted else stored.raw


class _Watch:
    """One open watch stream: its filters and its queue of events."""

    __slots__ = ("fields", "labels", "name", "namespace", "queue", "spec")

    def __init__(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str | None,
        labels: LabelSelector,
        fields: _FieldSelector,
    ) -> None:
        self.spec = spec
        self.namespace = namespace
        self.name = name
        self.labels = labels
        self.fields = fields
        self.queue: asyncio.Queue[_Event | None] = asyncio.Queue()

    def wants(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        if self.labels and not self.labels.matches(meta.get("labels")):
            return False
        return not self.fields or self.fields.matches(obj)

    def translate(self, event: _Event) -> tuple[str, JSON] | None:
        """The event as this watcher sees it: objects leaving the selection become DELETED."""
        new_ok = self.wants(event.obj)
        if event.type != "MODIFIED":
            return (event.type, event.obj) if new_ok else None
        old_ok = event.old is not None and self.wants(event.old)
        if new_ok:
            return ("MODIFIED" if old_ok else "ADDED", event.obj)
        if old_ok and event.old is not None:
            gone = dict(event.old)
            gone["metadata"] = dict(gone.get("metadata") or {}, resourceVersion=str(event.rv))
            return ("DELETED", gone)
        return None


@attrs.define(kw_only=True)
class _Store(kmock.KubernetesEmulator):
    """The emulator's state, and reading and committing objects."""

    watch_history_limit: int = 10_000  # events kept per resource for watch resumption
    object_history_limit: int | None = None  # versions kept per object in .objects[...].history
    request_log_limit: int | None = None  # requests kept for assertions; None keeps all
    bookmark_interval: float = 30.0  # seconds between BOOKMARK events on idle watches that allow them
    builtin_defaults: bool = True  # apply Deployment/Pod/Service/NetworkPolicy defaults on write
    namespaces: tuple[str, ...] = DEFAULT_NAMESPACES  # pre-created namespaces
    load_builtin_resources: bool = True  # register the bundled built-in resources for discovery

    _rv: int = attrs.field(default=1000, init=False)
    _keys: dict[references.resource, _KeySet] = attrs.field(factory=dict, init=False)
    _known_len: int = attrs.field(default=0, init=False)
    _history: dict[references.resource, collections.deque[_Event]] = attrs.field(factory=dict, init=False)
    _compacted: dict[references.resource, int] = attrs.field(factory=dict, init=False)
    _watches: dict[references.resource, set[_Watch]] = attrs.field(factory=dict, init=False)
    _custom: dict[references.resource, _CustomVersion] = attrs.field(factory=dict, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _frozen: collections.Counter[references.resource] = attrs.field(factory=collections.Counter, init=False)
    _request_seq: int = attrs.field(default=0, init=False)
    _slice_counts: dict[int, tuple[Any, int, int, int, bool]] = attrs.field(factory=dict, init=False)

    def _spec(self, group: str, version: str, plural: str) -> ResourceSpec | None:
        res = _resource(group, version, plural)
        info = self._resources._resources.get(res)
        custom = self._custom.get(res)
        if info is None:
            keys = self._keys.get(res)
            if not keys:
                return None
            info = references.ResourceInfo(namespaced=any(ns is not None for ns, _ in keys))
        kind = info.kind or plural.capitalize()
        subresources = set(info.subresources)
        scale = custom.scale if custom is not None else None
        if scale is None and "scale" in subresources and (group, plural) in BUILTIN_SCALABLE:
            scale = ScalePaths(structured_selector=True)
        if scale is None:
            subresources.discard("scale")
        return ResourceSpec(
            resource=res,
            storage=custom.storage if custom is not None else res,
            kind=kind,
            singular=info.singular or kind.lower(),
            namespaced=info.namespaced if info.namespaced is not None else True,
            subresources=frozenset(subresources),
            verbs=frozenset(info.verbs),
            custom=custom is not None,
            validator=custom.validator if custom is not None else None,
            scale=scale,
            selectable_fields=custom.selectable_fields if custom is not None else frozenset(),
        )

    def spec_for(self, resource: str | references.resource) -> ResourceSpec:
        """The :class:`ResourceSpec` of a served resource (``'apps/v1/deployments'``), or ``KeyError``."""
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        spec = self._spec(res.group or "", res.version or "", res.plural or "") if res.version else None
        if spec is None:
            raise KeyError(f"the server does not serve {resource!r}")
        return spec

    def _spec_or_raise(self, resource: str | references.resource) -> ResourceSpec:
        try:
            return self.spec_for(resource)
        except KeyError as e:
            raise _endpoint_not_found() from e

    def resource_for(self, api_version: str, kind: str) -> references.resource:
        """Map ``apiVersion``/``kind`` to the served resource (``apps/v1`` + ``Deployment``)."""
        group, _, version = api_version.rpartition("/")
        for res, info in self._resources._resources.items():
            if res.group == group and res.version == version and info.kind == kind:
                return res
        raise KeyError(f"no resource serves kind {kind!r} in {api_version!r}")

    @property
    def resource_version(self) -> int:
        """The current global resourceVersion."""
        return self._rv

    def _sync_index(self) -> None:
        """Re-index when tests add or drop objects directly through ``emulator.objects``."""
        if len(self._objects) == self._known_len:
            return
        self._keys.clear()
        for (res, namespace, name), obj in self._objects.items():
            if not obj.deleted:
                self._keys.setdefault(res, _KeySet())[namespace, name] = None
        self._known_len = len(self._objects)

    def _live(self, res: references.resource, namespace: str | None, name: str) -> JSON | None:
        """The stored object (not a copy: never modify it), or None if absent or deleted."""
        stored = self._objects._objects.get((res, namespace, name))
        raw = _latest(stored) if stored is not None else None
        if raw is None or stored is None:
            return None
        meta = raw.get("metadata")
        if not isinstance(meta, dict) or not meta.get("resourceVersion"):
            stored.history[-1] = self._adopt(res, namespace, name, raw)
            raw = _latest(stored)
        return raw

    def _adopt(self, res: references.resource, namespace: str | None, name: str, raw: JSON) -> JSON:
        """Stamp an object that a test put into ``emulator.objects`` directly (no event is emitted)."""
        raw = _clone(raw)
        meta = raw.setdefault("metadata", {})
        meta.setdefault("name", name)
        if namespace is not None:
            meta.setdefault("namespace", namespace)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        spec = self._spec(res.group or "", res.version or "", res.plural or "")
        if spec is not None:
            raw.setdefault("apiVersion", spec.api_version)
            raw.setdefault("kind", spec.kind)
            if spec.tracks_generation:
                meta.setdefault("generation", 1)
        return raw

    def _iter_live(self, spec: ResourceSpec, namespace: str | None) -> Iterator[JSON]:
        keyset = self._keys.get(spec.storage)
        if keyset is None:
            return
        for ns, name in keyset.sorted_keys(namespace, every_namespace=namespace is None):
            obj = self._live(spec.storage, ns, name)
            if obj is not None:
                yield obj

    def _present(self, spec: ResourceSpec, obj: JSON) -> JSON:
        """The object as seen through the requested version (custom resources share one store)."""
        if spec.storage != spec.resource and obj.get("apiVersion") != spec.api_version:
            return dict(obj, apiVersion=spec.api_version)
        return obj

    def _commit(self, spec: ResourceSpec, new: JSON, old: JSON | None, event_type: str) -> JSON:
        """Stamp a new resourceVersion, store the version and notify the watchers."""
        meta = new["metadata"]
        namespace = meta.get("namespace") if spec.namespaced else None
        key = (spec.storage, namespace, meta["name"])
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        stored = self._objects._objects.get(key)
        if event_type == "DELETED":
            if stored is not None:
                stored.delete()
            if spec.storage in self._keys:
                self._keys[spec.storage].pop((namespace, meta["name"]), None)
        elif stored is None:
            self._objects[key] = new
            self._known_len += 1
            self._keys.setdefault(spec.storage, _KeySet())[namespace, meta["name"]] = None
        else:
            stored.history.append(new)
            if self.object_history_limit is not None and len(stored.history) > self.object_history_limit:
                del stored.history[: len(stored.history) - self.object_history_limit]
            self._keys.setdefault(spec.storage, _KeySet())[namespace, meta["name"]] = None
        self._emit(spec.storage, _Event(self._rv, event_type, new, old))
        return new

    def _emit(self, storage: references.resource, event: _Event) -> None:
        history = self._history.get(storage)
        if history is None:
            history = self._history[storage] = collections.deque(maxlen=self.watch_history_limit)
        if len(history) == history.maxlen:
            self._compacted[storage] = history[0].rv
        history.append(event)
        for watch in self._watches.get(storage, ()):
            watch.queue.put_nowait(event)

    def _require(self, spec: ResourceSpec, namespace: str | None, name: str) -> JSON:
        obj = self._live(spec.storage, namespace if spec.namespaced else None, name)
        if obj is None:
            raise _not_found(spec.qualified, name, spec.details(name))
        return obj

    def _get(self, spec: ResourceSpec, namespace: str | None, name: str, sub: str) -> JSON:
        obj = self._require(spec, namespace, name)
        if sub == "scale":
            return self._scale_of(spec, obj)
        return self._present(spec, obj)

    def _scale_of(self, spec: ResourceSpec, obj: JSON) -> JSON:
        paths = spec.scale or ScalePaths(structured_selector=True)
        meta = obj.get("metadata") or {}
        if paths.structured_selector:
            selector = str(LabelSelector.from_structured(_get_path(obj, "spec.selector")))
        else:
            found = _get_path(obj, paths.label_selector) if paths.label_selector else None
            selector = str(found) if found else ""
        status: JSON = {"replicas": _get_path(obj, paths.status_replicas) or 0}
        if selector:
            status["selector"] = selector
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                key: meta[key]
                for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if key in meta
            },
            "spec": {"replicas": _get_path(obj, paths.spec_replicas) or 0},
            "status": status,
        }

    def _selectors(self, spec: ResourceSpec, params: Mapping[str, str]) -> tuple[LabelSelector, _FieldSelector]:
        try:
            labels = LabelSelector.parse(params.get("labelSelector"))
        except ValueError as e:
            raise _bad_request(str(e)) from e
        allowed = frozenset({"metadata.name", "metadata.namespace"}) | spec.selectable_fields
        allowed |= FIELD_SELECTORS.get((spec.group, spec.plural), frozenset())
        fields = _FieldSelector.parse(params.get("fieldSelector"), allowed, custom=spec.custom)
        return labels, fields

    def _list(self, spec: ResourceSpec, namespace: str | None, params: Mapping[str, str]) -> JSON:
        labels, fields = self._selectors(spec, params)
        exact = fields.exact_name()
        if exact is not None and (namespace is not None or not spec.namespaced):
            found = self._live(spec.storage, namespace if spec.namespaced else None, exact)
            candidates: Iterable[JSON] = [found] if found is not None else []
        else:
            candidates = self._iter_live(spec, namespace)
        items = [
            obj
            for obj in candidates
            if (not labels or labels.matches((obj.get("metadata") or {}).get("labels")))
            and (not fields or fields.matches(obj))
        ]

        meta: JSON = {"resourceVersion": str(self._rv)}
        token = params.get("continue")
        if token:
            try:
                start = json.loads(base64.urlsafe_b64decode(token.encode()).decode())["start"]
            except (ValueError, KeyError, TypeError) as e:
                raise _bad_request(f"continue key is not valid: {e}") from e
            items = [obj for obj in items if self._sort_key(obj) > tuple(start)]
        limit = int(params.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            last = self._sort_key(items[limit - 1])
            meta["continue"] = base64.urlsafe_b64encode(json.dumps({"start": last}).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {
            "kind": f"{spec.kind}List",
            "apiVersion": spec.api_version,
            "metadata": meta,
            "items": [self._present(spec, obj) for obj in items],
        }

    @staticmethod
    def _sort_key(obj: JSON) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        return (meta.get("namespace") or "", meta.get("name") or "")
