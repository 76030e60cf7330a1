"""Deletion: finalizers, namespace and CRD termination, and one garbage collection pass on request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from kubemu.errors import ApiError
from kubemu.patches import _clone
from kubemu.resources import CRD_RESOURCE, NAMESPACES, UNDELETABLE_NAMESPACES, _now
from kubemu.writes import _Writes

if TYPE_CHECKING:
    from kubemu.errors import JSON
    from kubemu.resources import ResourceSpec


@attrs.define(kw_only=True)
class _Deleting(_Writes):
    """Deletion, termination and garbage collection."""

    def _delete(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        params: Mapping[str, str],
        body: Mapping[str, Any],
    ) -> tuple[int, JSON]:
        obj = self._require(spec, namespace, name)
        meta = obj["metadata"]
        preconditions = body.get("preconditions") or {}
        if preconditions.get("uid") and preconditions["uid"] != meta.get("uid"):
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {spec.qualified} "{name}": '
                f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                f"UID in object meta: {meta.get('uid')}",
                spec.details(name),
            )
        if preconditions.get("resourceVersion") and preconditions["resourceVersion"] != meta.get("resourceVersion"):
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {spec.qualified} "{name}": '
                f"Precondition failed: ResourceVersion in precondition: "
                f"{preconditions['resourceVersion']}, ResourceVersion in object meta: "
                f"{meta.get('resourceVersion')}",
                spec.details(name),
            )
        if spec.resource == NAMESPACES and name in UNDELETABLE_NAMESPACES:
            raise ApiError(
                403,
                "Forbidden",
                f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                spec.details(name),
            )
        dry_run = params.get("dryRun") == "All" or body.get("dryRun") == ["All"]
        policy = params.get("propagationPolicy") or body.get("propagationPolicy")
        accepted = 202 if policy == "Foreground" else 200
        if meta.get("deletionTimestamp"):
            return accepted, self._present(spec, obj)
        if dry_run:
            return 200, self._present(spec, obj)
        keep = bool(meta.get("finalizers")) or spec.resource == NAMESPACES
        if keep:
            new = _clone(obj)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            if spec.tracks_generation:
                new["metadata"]["generation"] = int(meta.get("generation") or 0) + 1
            if spec.resource == NAMESPACES:
                new.setdefault("status", {})["phase"] = "Terminating"
            committed = self._commit(spec, new, obj, "MODIFIED")
            if spec.resource == NAMESPACES:
                self._terminate_namespace(name)
                committed = self._live(spec.storage, None, name) or committed
            elif spec.resource == CRD_RESOURCE:
                self._terminate_crd(committed)
                committed = self._live(spec.storage, None, name) or committed
            return accepted, self._present(spec, committed)
        removed = self._commit(spec, _clone(obj), obj, "DELETED")
        self._after_removal(spec, removed)
        if spec.custom:
            return 200, self._present(spec, removed)
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": dict(spec.details(name), uid=meta.get("uid")),
        }

    def _delete_collection(self, spec: ResourceSpec, namespace: str | None, params: Mapping[str, str]) -> JSON:
        listing = self._list(
            spec, namespace, {k: v for k, v in params.items() if k in ("labelSelector", "fieldSelector")}
        )
        for item in listing["items"]:
            meta = item["metadata"]
            self._delete(spec, meta.get("namespace"), meta["name"], params, {})
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}

    def _terminate_namespace(self, namespace: str) -> None:
        """The namespace controller: delete everything in the namespace, then the namespace."""
        for res, keys in list(self._keys.items()):
            for ns, name in list(keys):
                if ns != namespace:
                    continue
                spec = self._spec(res.group or "", res.version or "", res.plural or "")
                if spec is not None and self._live(res, ns, name) is not None:
                    self._delete(spec, ns, name, {}, {})
        self._finalize_namespace(namespace)

    def _terminate_crd(self, crd: JSON) -> None:
        """The CRD finalizer: delete every custom resource, then let the CRD go."""
        crd_name = crd["metadata"]["name"]
        served = [res for res, c in self._custom.items() if c.crd_name == crd_name]
        if served:
            spec = self._spec(served[0].group or "", served[0].version or "", served[0].plural or "")
            if spec is not None:
                for ns, name in list(self._keys.get(spec.storage, {})):
                    if self._live(spec.storage, ns, name) is not None:
                        self._delete(spec, ns, name, {}, {})
        current = self._live(CRD_RESOURCE, None, crd_name)
        if current is not None:
            self._finalize_crd(current)

    def collect_garbage(self) -> list[tuple[str, str | None, str]]:
        """
        Delete the objects whose owners (``ownerReferences``, by uid) are all gone; repeat until stable.

        A real cluster's garbage collector does this in the background; the emulator does not, so that
        tests see exactly what their code did. Dependents with finalizers get a ``deletionTimestamp``.
        Returns ``(resource, namespace, name)`` of every object deleted.
        """
        self._sync_index()
        deleted: list[tuple[str, str | None, str]] = []
        while True:
            uids = {
                (obj.get("metadata") or {}).get("uid")
                for res, keys in self._keys.items()
                for ns, name in keys
                if (obj := self._live(res, ns, name)) is not None
            }
            orphans = []
            for res, keys in self._keys.items():
                for ns, name in keys:
                    obj = self._live(res, ns, name)
                    meta = (obj or {}).get("metadata") or {}
                    refs = meta.get("ownerReferences") or []
                    if refs and not meta.get("deletionTimestamp") and all(ref.get("uid") not in uids for ref in refs):
                        orphans.append((res, ns, name))
            if not orphans:
                return deleted
            for res, ns, name in orphans:
                spec = self._spec(res.group or "", res.version or "", res.plural or "")
                if spec is not None and self._live(res, ns, name) is not None:
                    self._delete(spec, ns, name, {}, {})
                    deleted.append((f"{res.group}/{res.version}/{res.plural}".lstrip("/"), ns, name))
