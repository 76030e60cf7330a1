"""
A realistic Kubernetes API server in memory, built on KMock, for tests and for the sandbox mode.

:class:`RealisticEmulator` serves the Kubernetes REST API over HTTP (through ``kmock.Server``, the
``kmock`` pytest fixture, or :class:`kubemu.server.ApiServerThread`) with the semantics
that operators and ``kubectl`` rely on:

* object metadata: a global, monotonic ``resourceVersion``, ``uid``, ``creationTimestamp``,
  ``generation`` (1 on create, +1 whenever anything but metadata and status changes, for custom
  resources and for spec-bearing built-ins such as Deployments), ``generateName``;
* status codes and ``kind: Status`` bodies as a real server sends them: 201 on create,
  404 NotFound, 409 AlreadyExists, 409 Conflict on a stale ``resourceVersion``, 422 Invalid with
  ``details.causes``, 400 BadRequest, 415 for strategic merge on custom resources;
* writes: POST, PUT, JSON merge patch, JSON patch (a failing ``test`` op is a 422), strategic merge
  patch (approximated with the patch merge keys of the common built-in lists) and server-side apply
  (an upsert merge, without conflicts); ``dryRun=All``; ``fieldValidation``;
  ``managedFields`` per manager (the ``fieldManager`` parameter or the User-Agent), operation and
  subresource, with field paths approximated without the built-in schemas
  (see :mod:`kubemu.managedfields`);
  no-op updates keep the ``resourceVersion`` and emit no watch event, as on a real server;
* subresources: ``/status`` (and the main endpoint ignoring ``.status``), ``/scale`` for
  Deployments, StatefulSets, ReplicaSets and custom resources that declare it;
* reads: get, list (namespaced and cluster-wide) with ``labelSelector``, ``fieldSelector``,
  ``limit``/``continue``, and watch with resumption from a ``resourceVersion`` (replaying only newer
  events from a bounded history), ``410 Expired`` once that history has wrapped, ``timeoutSeconds``,
  bookmarks and ``sendInitialEvents``; watch streams are ``application/json``;
* deletion: finalizers (``deletionTimestamp`` and removal when the last finalizer goes),
  namespace termination, CRD termination (its custom resources are deleted first);
* discovery: ``/version``, ``/api``, ``/apis`` and every group/version, for the bundled built-ins and
  for CRDs, which register themselves when POSTed and unregister when deleted; ``/openapi/v3`` with the
  paths of every resource and the schemas of custom resources, so that kubectl validates (by leaving it
  to the server) and ``kubectl explain`` works as against a real cluster (see :mod:`kubemu.openapi`);
* custom resources are pruned, defaulted and validated against their CRD's ``openAPIV3Schema``
  including ``x-kubernetes-validations`` CEL rules (see :mod:`kubemu.crvalidate`);
* built-ins get the server-side defaults operators notice (Deployment ``replicas: 1`` and strategy,
  pod template container defaults, Service ports, NetworkPolicy ``policyTypes``, Secret
  ``stringData``), and the checks that catch common manifest bugs: metadata names and labels,
  owner references, a Deployment selector that must match its template, string-only ConfigMap data,
  the data of an ``immutable: true`` ConfigMap or Secret (422, as a real server: only metadata may change);
* kubectl's protobuf bodies for ``kubectl create configmap|secret|namespace``.

Extensions over a real server, for tests: ``timeoutSeconds`` may be fractional; objects put into
``emulator.objects`` directly are served (stamped with a uid and resourceVersion on first read);
:meth:`~RealisticEmulator.inject_fault`, :meth:`~RealisticEmulator.freeze_watches`,
:meth:`~RealisticEmulator.writes` and :meth:`~RealisticEmulator.collect_garbage`.

What is **not** emulated (a real cluster is needed for these):

* controllers: Deployments never get ReplicaSets, Pods or ``status.replicas`` unless a test writes
  them (through ``/status``); ``kubectl rollout status`` never finishes;
* garbage collection through ``ownerReferences``: deleting an owner leaves its dependents in place,
  as if the GC controller were slow; call :meth:`RealisticEmulator.collect_garbage` to run one pass;
  ``propagationPolicy`` is accepted and ignored (no ``foregroundDeletion``/``orphan`` finalizers);
* admission webhooks, RBAC and authentication (every request is allowed);
* server-side apply conflicts (apply is a merge; it owns the fields it applied, others keep theirs);
* schemas of built-in kinds (unknown fields of built-ins are kept; only metadata is checked), and
  protobuf bodies of other kinds (415: use ``kubectl apply -f``, which sends JSON);
* conversion between versions of built-ins (``autoscaling/v1`` and ``v2`` HPAs are separate stores);
  custom resources served in several versions share one store (conversion strategy ``None``);
* the exact strategic-merge semantics of every type, ``resourceVersionMatch`` on lists (lists are
  always the latest state), Table output for ``kubectl get`` (kubectl prints client-side),
  ``/openapi/v2``, and the schemas of built-in kinds in ``/openapi/v3``.

The emulator is single-threaded: all state lives in its event loop. Its synchronous helpers
(:meth:`~RealisticEmulator.create_object` and friends) must be called from that loop's thread
(``ApiServerThread.call`` does that for code running elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
from kmock._internal import references

from kubemu.checks import _WriteOptions
from kubemu.http import _Http
from kubemu.patches import _clone
from kubemu.resources import NAMESPACES, _bundled_resources
from kubemu.watch import _ServerList

if TYPE_CHECKING:
    from kubemu.errors import JSON


__all__ = ["RealisticEmulator"]


@attrs.define(kw_only=True)
class RealisticEmulator(_Http):
    """
    An in-memory Kubernetes API server with real API semantics (see the module docstring).

    Use it like any KMock handler: ``@pytest.mark.kmock(cls=RealisticEmulator)`` with the ``kmock``
    fixture, ``async with RealisticEmulator() as emu, kmock.Server(emu): ...``, or through
    :class:`kubemu.server.ApiServerThread` from synchronous code.

    User reactions registered with the KMock DSL take precedence over the emulation (that is how
    :meth:`inject_fault` works); a reaction that answers a write request leaves the stored objects
    untouched, as if an admission webhook had rejected it. The stored objects and their history are
    in ``emulator.objects`` (KMock's ``ObjectsArray``), keyed by the *storage* resource.
    """

    def __attrs_post_init__(self) -> None:
        # NB: the parent classes' fallback reactions are deliberately not registered: the emulator
        # routes requests itself (it is much faster than matching ~15 fallback reactions per request).
        object.__setattr__(self, "servers", _ServerList(self))
        if self.load_builtin_resources:
            for res, info in _bundled_resources().items():
                self._resources._resources[res] = attrs.evolve(info)
        for name in self.namespaces:
            self.create_object(NAMESPACES, {"metadata": {"name": name}})

    def create_object(
        self, resource: str | references.resource, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> JSON:
        """Create an object as a POST would (validation, defaults, events); raise :class:`ApiError`."""
        spec = self._spec_or_raise(resource)
        self._sync_index()
        if spec.namespaced:
            namespace = namespace or (body.get("metadata") or {}).get("namespace") or "default"
        return _clone(self._create(spec, namespace if spec.namespaced else None, dict(body), _WriteOptions()))

    def get_object(
        self, resource: str | references.resource, name: str, *, namespace: str | None = None
    ) -> JSON | None:
        """The current object, or None."""
        spec = self._spec_or_raise(resource)
        self._sync_index()
        obj = self._live(spec.storage, namespace if spec.namespaced else None, name)
        return None if obj is None else _clone(self._present(spec, obj))

    def list_objects(
        self,
        resource: str | references.resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[JSON]:
        """Current objects, sorted by namespace and name, filtered as a list request would."""
        spec = self._spec_or_raise(resource)
        self._sync_index()
        params = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        return _clone(self._list(spec, namespace, params)["items"])

    def patch_object(
        self,
        resource: str | references.resource,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        patch_type: str = "merge",
    ) -> JSON:
        """Patch as a PATCH request would (``patch_type``: merge, json, strategic, apply)."""
        spec = self._spec_or_raise(resource)
        self._sync_index()
        content_type = {
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "apply": "application/apply-patch+yaml",
        }[patch_type]
        _, result = self._patch(
            spec,
            namespace if spec.namespaced else None,
            name,
            subresource or "",
            content_type,
            patch,
            "",
            _WriteOptions(),
        )
        return _clone(result)

    def delete_object(
        self, resource: str | references.resource, name: str, *, namespace: str | None = None
    ) -> JSON | None:
        """Delete as a DELETE request would; returns the object while finalizers keep it, else None."""
        spec = self._spec_or_raise(resource)
        self._sync_index()
        self._delete(spec, namespace if spec.namespaced else None, name, {}, {})
        return self.get_object(resource, name, namespace=namespace)

    def apply_object(self, body: Mapping[str, Any], *, namespace: str | None = None) -> JSON:
        """Create the object, or merge it into the existing one (like ``kubectl apply --server-side``)."""
        res = self.resource_for(str(body.get("apiVersion", "")), str(body.get("kind", "")))
        spec = self._spec_or_raise(res)
        self._sync_index()
        meta = body.get("metadata") or {}
        ns = (namespace or meta.get("namespace") or "default") if spec.namespaced else None
        _, result = self._apply(spec, ns, str(meta.get("name", "")), "", dict(body), _WriteOptions())
        return _clone(result)
