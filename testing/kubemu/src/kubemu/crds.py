"""CustomResourceDefinitions: their validation, status and (un)registration as served resources."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from kmock._internal import references

from kubemu import crvalidate
from kubemu.resources import CRD_RESOURCE, ScalePaths, _CustomVersion, _now
from kubemu.watch import _Watching

if TYPE_CHECKING:
    from kubemu.errors import JSON
    from kubemu.resources import ResourceSpec


@attrs.define(kw_only=True)
class _Crds(_Watching):
    """CRDs: checked, given a status, and served or unserved."""

    @staticmethod
    def _crd_errors(crd: JSON) -> list[crvalidate.FieldError]:
        errors = []
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        group = spec.get("group") or ""
        name = (crd.get("metadata") or {}).get("name")
        if not group:
            errors.append(crvalidate.FieldError("spec.group", "Required"))
        if not names.get("plural"):
            errors.append(crvalidate.FieldError("spec.names.plural", "Required"))
        if not names.get("kind"):
            errors.append(crvalidate.FieldError("spec.names.kind", "Required"))
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            errors.append(
                crvalidate.FieldError(
                    "spec.scope",
                    "NotSupported",
                    spec.get("scope"),
                    'supported values: "Cluster", "Namespaced"',
                )
            )
        if names.get("plural") and group and name != f"{names['plural']}.{group}":
            errors.append(
                crvalidate.FieldError("metadata.name", "Invalid", name, 'must be spec.names.plural+"."+spec.group')
            )
        versions = spec.get("versions") or []
        if not versions:
            errors.append(
                crvalidate.FieldError(
                    "spec.versions",
                    "Invalid",
                    versions,
                    "must have exactly one version marked as storage version",
                )
            )
        elif sum(1 for v in versions if v.get("storage")) != 1:
            errors.append(
                crvalidate.FieldError(
                    "spec.versions",
                    "Invalid",
                    [v.get("name") for v in versions],
                    "must have exactly one version marked as storage version",
                )
            )
        for index, version in enumerate(versions):
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if schema is None:
                errors.append(
                    crvalidate.FieldError(
                        f"spec.versions[{index}].schema.openAPIV3Schema",
                        "Required",
                        None,
                        "schemas are required",
                    )
                )
                continue
            for problem in crvalidate.check_schema(schema, f"spec.versions[{index}].schema.openAPIV3Schema"):
                path, _, detail = problem.partition(": ")
                errors.append(crvalidate.FieldError(path, "Invalid", None, detail.partition(": ")[2] or detail))
        return errors

    @staticmethod
    def _crd_status(crd: JSON, old: JSON | None) -> JSON:
        spec = crd.get("spec") or {}
        names = dict(spec.get("names") or {})
        names.setdefault("singular", str(names.get("kind", "")).lower())
        names.setdefault("listKind", f"{names.get('kind', '')}List")
        old_conditions = {c.get("type"): c for c in ((old or {}).get("status") or {}).get("conditions") or []}
        now = _now()
        conditions = []
        for ctype, reason, message in (
            ("NamesAccepted", "NoConflicts", "no conflicts found"),
            ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ):
            conditions.append(
                {
                    "type": ctype,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": old_conditions.get(ctype, {}).get("lastTransitionTime", now),
                }
            )
        if (crd.get("metadata") or {}).get("deletionTimestamp"):
            conditions.append(
                {
                    "type": "Terminating",
                    "status": "True",
                    "reason": "InstanceDeletionInProgress",
                    "message": "CustomResource deletion is in progress",
                    "lastTransitionTime": now,
                }
            )
        stored = list(((old or {}).get("status") or {}).get("storedVersions") or [])
        for version in spec.get("versions") or []:
            if version.get("storage") and version.get("name") not in stored:
                stored.append(version.get("name"))
        return {"conditions": conditions, "acceptedNames": names, "storedVersions": stored}

    def _register_crd(self, crd: JSON) -> None:
        """Serve the CRD's versions: discovery, storage, validation, as the apiextensions server does."""
        spec = crd.get("spec") or {}
        crd_name = crd["metadata"]["name"]
        group = spec["group"]
        names = spec.get("names") or {}
        plural = names["plural"]
        versions = spec.get("versions") or []
        storage_version = next(v["name"] for v in versions if v.get("storage"))
        storage = references.resource(group, storage_version, plural)
        for res in [r for r, c in self._custom.items() if c.crd_name == crd_name]:
            del self._custom[res]
            self._resources._resources.pop(res, None)
        for version in versions:
            if not version.get("served", True):
                continue
            res = references.resource(group, version["name"], plural)
            subresources = version.get("subresources") or {}
            scale = None
            if "scale" in subresources:
                s = subresources["scale"] or {}
                scale = ScalePaths(
                    spec_replicas=s.get("specReplicasPath", ".spec.replicas"),
                    status_replicas=s.get("statusReplicasPath", ".status.replicas"),
                    label_selector=s.get("labelSelectorPath"),
                )
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            self._resources._resources[res] = references.ResourceInfo(
                namespaced=spec.get("scope") == "Namespaced",
                kind=names["kind"],
                singular=names.get("singular") or names["kind"].lower(),
                verbs={"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
                shortnames=set(names.get("shortNames") or ()),
                categories=set(names.get("categories") or ()),
                subresources={sub for sub in ("status", "scale") if sub in subresources},
            )
            self._custom[res] = _CustomVersion(
                crd_name=crd_name,
                storage=storage,
                validator=crvalidate.SchemaValidator(schema) if schema else None,
                scale=scale,
                selectable_fields=frozenset(
                    f.get("jsonPath", "").lstrip(".") for f in version.get("selectableFields") or ()
                ),
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
                schema=schema,
            )

    def _unregister_crd(self, crd: JSON) -> None:
        crd_name = crd["metadata"]["name"]
        storages = set()
        for res in [r for r, c in self._custom.items() if c.crd_name == crd_name]:
            storages.add(self._custom[res].storage)
            del self._custom[res]
            self._resources._resources.pop(res, None)
        for storage in storages:
            for watch in self._watches.pop(storage, set()):
                watch.queue.put_nowait(None)
            self._history.pop(storage, None)
            self._compacted.pop(storage, None)

    def _crd_terminating(self, spec: ResourceSpec) -> bool:
        custom = self._custom.get(spec.resource)
        crd = self._live(CRD_RESOURCE, None, custom.crd_name) if custom is not None else None
        return bool(crd is not None and (crd.get("metadata") or {}).get("deletionTimestamp"))
