"""Writes: create, update, patch, apply and /scale; finalizers and what happens when the last one goes."""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import yaml
from kmock._internal import rendering

from kubemu import crvalidate, managedfields
from kubemu.checks import (
    _DNS_LABEL,
    _DNS_LABEL_MSG,
    _DNS_SUBDOMAIN,
    _DNS_SUBDOMAIN_MSG,
    SERVER_MANAGED_META,
    _Checks,
    _WriteOptions,
)
from kubemu.errors import ApiError, _bad_request, _not_found
from kubemu.fielderrors import format_value
from kubemu.patches import MERGE_KEYS, _clone, json_patch, merge_patch, strategic_merge_patch
from kubemu.resources import CRD_FINALIZER, CRD_RESOURCE, NAMESPACES, ScalePaths, _now

if TYPE_CHECKING:
    from kubemu.errors import JSON
    from kubemu.resources import ResourceSpec


_GENERATE_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


@attrs.define(kw_only=True)
class _Writes(_Checks):
    """Create, update, patch, apply, /scale, and removal once no finalizer holds an object."""

    @staticmethod
    def _write_options(params: Mapping[str, str], request: rendering.Request) -> _WriteOptions:
        opts = _WriteOptions.from_params(params)
        opts.manager = managedfields.manager_of(params.get("fieldManager"), request.headers.get("User-Agent"))
        return opts

    def _managed_fields(
        self, spec: ResourceSpec, old: JSON | None, new: JSON, opts: _WriteOptions, sub: str
    ) -> list[JSON]:
        """`new`'s managedFields after this write (see :mod:`kubemu.managedfields`)."""
        subresource = opts.subresource or sub
        scope = "status" if subresource == "status" else ""
        status_is_subresource = "status" in spec.subresources
        before = managedfields.scoped(old, scope, status_is_subresource) if old is not None else {}
        after = managedfields.scoped(new, scope, status_is_subresource)
        changed, removed = managedfields.diff(before, after, MERGE_KEYS)
        applied = None
        if opts.operation == "Apply" and isinstance(opts.applied, dict):
            applied = managedfields.leaf_paths(
                managedfields.scoped(opts.applied, scope, status_is_subresource), MERGE_KEYS
            )
        entries = ((old or {}).get("metadata") or {}).get("managedFields") or []
        return managedfields.record_write(
            entries,
            manager=opts.manager,
            operation=opts.operation,
            api_version=spec.api_version,
            subresource=subresource,
            changed=changed,
            removed=removed,
            now=_now(),
            applied=applied,
        )

    def _create(self, spec: ResourceSpec, namespace: str | None, body: Any, opts: _WriteOptions) -> JSON:
        obj = self._check_identity(spec, _clone(body))
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = obj["metadata"] = {}
        if spec.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise _bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = self._generate_name(spec, namespace, str(meta["generateName"]))
            meta["name"] = name
        if not name:
            raise self._invalid(
                spec,
                "",
                [crvalidate.FieldError("metadata.name", "Required", None, "name or generateName is required")],
            )
        label_like = spec.plural in ("namespaces", "services")
        pattern, message, limit = (
            (_DNS_LABEL, _DNS_LABEL_MSG, 63) if label_like else (_DNS_SUBDOMAIN, _DNS_SUBDOMAIN_MSG, 253)
        )
        if not isinstance(name, str) or len(name) > limit or not pattern.fullmatch(name):
            raise self._invalid(spec, str(name), [crvalidate.FieldError("metadata.name", "Invalid", name, message)])
        self._check_namespace_open(spec, namespace, name)
        if spec.custom and self._crd_terminating(spec):
            raise ApiError(
                405,
                "MethodNotAllowed",
                "create not allowed while custom resource definition is terminating",
                spec.details(name),
            )

        for key in SERVER_MANAGED_META:
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if spec.tracks_generation:
            meta["generation"] = 1
        if "status" in spec.subresources:
            obj.pop("status", None)
        if spec.plural == "namespaces" and spec.group == "":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj["status"] = {"phase": "Active"}
        if spec.resource == CRD_RESOURCE:
            finalizers = meta.setdefault("finalizers", [])
            if CRD_FINALIZER not in finalizers:
                finalizers.append(CRD_FINALIZER)

        obj = self._finish(spec, obj, None, opts, name)
        managed = self._managed_fields(spec, None, obj, opts, "")
        if managed:
            obj["metadata"]["managedFields"] = managed
        key_ns = namespace if spec.namespaced else None
        if self._live(spec.storage, key_ns, name) is not None:
            raise ApiError(409, "AlreadyExists", f'{spec.qualified} "{name}" already exists', spec.details(name))
        if spec.resource == CRD_RESOURCE:
            obj["status"] = self._crd_status(obj, None)
        if opts.dry_run:
            return self._present(spec, obj)
        created = self._commit(spec, obj, None, "ADDED")
        if spec.resource == CRD_RESOURCE:
            self._register_crd(created)
        return self._present(spec, created)

    def _generate_name(self, spec: ResourceSpec, namespace: str | None, prefix: str) -> str:
        prefix = prefix[:58]
        for _ in range(16):
            name = prefix + "".join(random.choice(_GENERATE_NAME_CHARS) for _ in range(5))
            if self._live(spec.storage, namespace if spec.namespaced else None, name) is None:
                return name
        raise ApiError(409, "AlreadyExists", f'{spec.qualified} "{prefix}" already exists', spec.details(prefix))

    def _update(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        sub: str,
        candidate: Any,
        opts: _WriteOptions,
        *,
        require_rv: bool,
    ) -> JSON:
        """Replace an object with ``candidate`` (the full desired object), as PUT and PATCH both end."""
        old = self._require(spec, namespace, name)
        new = self._check_identity(spec, _clone(candidate))
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = new["metadata"] = {}
        old_meta = old["metadata"]
        if meta.get("name") not in (None, "", name):
            raise _bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if spec.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise _bad_request("the namespace of the provided object does not match the namespace sent on the request")
        rv = meta.get("resourceVersion")
        if rv and str(rv) != old_meta.get("resourceVersion"):
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {spec.qualified} "{name}": the object '
                "has been modified; please apply your changes to the latest version and "
                "try again",
                spec.details(name),
            )
        if not rv and require_rv and spec.custom:
            raise self._invalid(
                spec,
                name,
                [
                    crvalidate.FieldError(
                        "metadata.resourceVersion", "Invalid", "0x0", "must be specified for an update"
                    )
                ],
            )
        if sub == "status":
            status = new.get("status")
            new = _clone(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
            meta = new["metadata"]
        elif "status" in spec.subresources:
            if "status" in old:
                new["status"] = _clone(old["status"])
            else:
                new.pop("status", None)
        meta["name"] = name
        if spec.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        for key in SERVER_MANAGED_META:
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        if "generateName" in old_meta:
            meta["generateName"] = old_meta["generateName"]
        meta["resourceVersion"] = old_meta.get("resourceVersion")
        if spec.plural == "namespaces" and spec.group == "":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name

        if old_meta.get("deletionTimestamp"):
            added = [f for f in meta.get("finalizers") or [] if f not in (old_meta.get("finalizers") or [])]
            if added:
                raise self._invalid(
                    spec,
                    name,
                    [
                        crvalidate.FieldError(
                            "metadata.finalizers",
                            "Forbidden",
                            None,
                            "no new finalizers can be added if the object is being deleted, "
                            f"found new finalizers {json.dumps(added)}",
                        )
                    ],
                )

        new = self._finish(spec, new, old, opts, name)
        if spec.resource == CRD_RESOURCE:
            new["status"] = self._crd_status(new, old)
        if spec.tracks_generation and self._spec_part(spec, new) != self._spec_part(spec, old):
            new["metadata"]["generation"] = int(old_meta.get("generation") or 0) + 1
        if "managedFields" in old_meta:
            new["metadata"]["managedFields"] = old_meta["managedFields"]
        if new == old:
            return self._present(spec, old)  # a no-op: no new resourceVersion, no event
        managed = self._managed_fields(spec, old, new, opts, sub)
        if managed:
            new["metadata"]["managedFields"] = managed
        else:
            new["metadata"].pop("managedFields", None)
        if opts.dry_run:
            return self._present(spec, new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            result = self._commit(spec, new, old, "DELETED")
            self._after_removal(spec, result)
            return self._present(spec, result)
        committed = self._commit(spec, new, old, "MODIFIED")
        if spec.resource == CRD_RESOURCE:
            self._register_crd(committed)
        return self._present(spec, committed)

    @staticmethod
    def _spec_part(spec: ResourceSpec, obj: JSON) -> JSON:
        skipped = ("metadata", "status") if "status" in spec.subresources else ("metadata",)
        return {key: value for key, value in obj.items() if key not in skipped}

    def _replace(
        self, spec: ResourceSpec, namespace: str | None, name: str, sub: str, body: Any, opts: _WriteOptions
    ) -> JSON:
        if sub == "scale":
            return self._write_scale(spec, namespace, name, body, opts)
        if sub not in ("", "status"):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        return self._update(spec, namespace, name, sub, body, opts, require_rv=True)

    def _patch(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        sub: str,
        content_type: str,
        data: Any,
        text: str,
        opts: _WriteOptions,
    ) -> tuple[int, JSON]:
        content_type = content_type.split(";")[0].strip().lower()
        if content_type == "application/apply-patch+yaml":
            if data is None:
                try:
                    data = yaml.safe_load(text)
                except yaml.YAMLError as e:
                    raise _bad_request(f"error decoding YAML: {e}") from e
            return self._apply(spec, namespace, name, sub, data, opts)
        if sub == "scale":
            current = self._scale_of(spec, self._require(spec, namespace, name))
            return 200, self._write_scale(spec, namespace, name, self._patched(spec, current, content_type, data), opts)
        if sub not in ("", "status"):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        current = self._require(spec, namespace, name)
        patched = self._patched(spec, current, content_type, data)
        return 200, self._update(spec, namespace, name, sub, patched, opts, require_rv=False)

    def _patched(self, spec: ResourceSpec, current: JSON, content_type: str, data: Any) -> Any:
        match content_type:
            case "application/json-patch+json":
                return json_patch(current, data)
            case "application/merge-patch+json":
                if not isinstance(data, dict):
                    raise _bad_request(
                        "the body of the request was in an unknown format - a merge patch must be an object"
                    )
                return merge_patch(current, data)
            case "application/strategic-merge-patch+json" if not spec.custom:
                if not isinstance(data, dict):
                    raise _bad_request(
                        "the body of the request was in an unknown format - a strategic merge patch must be an object"
                    )
                return strategic_merge_patch(current, data)
            case _:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - "
                    "accepted media types include: application/json-patch+json, "
                    "application/merge-patch+json, application/apply-patch+yaml"
                    + ("" if spec.custom else ", application/strategic-merge-patch+json"),
                )

    def _apply(
        self, spec: ResourceSpec, namespace: str | None, name: str, sub: str, data: Any, opts: _WriteOptions
    ) -> tuple[int, JSON]:
        """Server-side apply, approximated: create when absent, else merge (no field ownership)."""
        if not isinstance(data, dict):
            raise _bad_request("the body of the request was in an unknown format - apply patch must be an object")
        meta = data.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise _bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if not data.get("apiVersion") or not data.get("kind"):
            raise _bad_request("invalid object type: apiVersion and kind must be set in an apply patch")
        opts = dataclasses.replace(opts, operation="Apply", applied=data)
        current = self._live(spec.storage, namespace if spec.namespaced else None, name)
        if current is None:
            if sub:
                raise _not_found(spec.qualified, name, spec.details(name))
            body = _clone(data)
            body.setdefault("metadata", {})["name"] = name
            return 201, self._create(spec, namespace, body, opts)
        if sub == "scale":
            return 200, self._write_scale(spec, namespace, name, merge_patch(self._scale_of(spec, current), data), opts)
        merged = merge_patch(current, data) if spec.custom else strategic_merge_patch(current, data)
        return 200, self._update(spec, namespace, name, sub, merged, opts, require_rv=False)

    def _write_scale(
        self, spec: ResourceSpec, namespace: str | None, name: str, scale: Any, opts: _WriteOptions
    ) -> JSON:
        old = self._require(spec, namespace, name)
        if not isinstance(scale, dict):
            raise _bad_request("the body of the request was in an unknown format - Scale must be an object")
        rv = (scale.get("metadata") or {}).get("resourceVersion")
        if rv and str(rv) != old["metadata"].get("resourceVersion"):
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {spec.qualified} "{name}": the object '
                "has been modified; please apply your changes to the latest version and "
                "try again",
                spec.details(name),
            )
        replicas = (scale.get("spec") or {}).get("replicas")
        if replicas is None:
            replicas = 0
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise ApiError(
                422,
                "Invalid",
                f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                f"{format_value(replicas)}: must be greater than or equal to 0",
                {
                    "name": name,
                    "group": "autoscaling",
                    "kind": "Scale",
                    "causes": [
                        {
                            "reason": "FieldValueInvalid",
                            "field": "spec.replicas",
                            "message": f"Invalid value: {format_value(replicas)}: "
                            "must be greater than or equal to 0",
                        }
                    ],
                },
            )
        paths = spec.scale or ScalePaths(structured_selector=True)
        candidate = _clone(old)
        node = candidate
        parts = paths.spec_replicas.strip(".").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = replicas
        opts = dataclasses.replace(opts, subresource="scale")
        updated = self._update(spec, namespace, name, "", candidate, opts, require_rv=False)
        return self._scale_of(spec, updated)

    def _remove_finalizer(self, spec: ResourceSpec, obj: JSON, finalizer: str) -> None:
        meta = obj["metadata"]
        new = _clone(obj)
        new["metadata"]["finalizers"] = [f for f in meta.get("finalizers") or [] if f != finalizer]
        if not new["metadata"]["finalizers"]:
            del new["metadata"]["finalizers"]
        self._update(spec, meta.get("namespace"), meta["name"], "", new, _WriteOptions(), require_rv=False)

    def _after_removal(self, spec: ResourceSpec, obj: JSON) -> None:
        """Finish terminating namespaces and CRDs that were waiting for this object to go."""
        meta = obj.get("metadata") or {}
        if spec.resource == CRD_RESOURCE:
            self._unregister_crd(obj)
            return
        if spec.namespaced and meta.get("namespace"):
            ns = self._live(NAMESPACES, None, meta["namespace"])
            if ns is not None and (ns.get("metadata") or {}).get("deletionTimestamp"):
                self._finalize_namespace(meta["namespace"])
        if spec.custom:
            custom = self._custom.get(spec.resource)
            crd = self._live(CRD_RESOURCE, None, custom.crd_name) if custom is not None else None
            if crd is not None and (crd.get("metadata") or {}).get("deletionTimestamp"):
                self._finalize_crd(crd)

    def _finalize_namespace(self, namespace: str) -> None:
        if any(
            ns == namespace and self._live(res, ns, name) is not None
            for res, keys in self._keys.items()
            for ns, name in keys
        ):
            return
        spec = self._spec("", "v1", "namespaces")
        obj = self._live(NAMESPACES, None, namespace)
        if spec is not None and obj is not None:
            self._commit(spec, _clone(obj), obj, "DELETED")

    def _finalize_crd(self, crd: JSON) -> None:
        crd_name = crd["metadata"]["name"]
        served = [res for res, c in self._custom.items() if c.crd_name == crd_name]
        storage = self._custom[served[0]].storage if served else None
        if storage is not None and any(self._live(storage, ns, n) is not None for ns, n in self._keys.get(storage, {})):
            return
        spec = self._spec("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        if spec is not None and CRD_FINALIZER in (crd["metadata"].get("finalizers") or []):
            self._remove_finalizer(spec, crd, CRD_FINALIZER)
