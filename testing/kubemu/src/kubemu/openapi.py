"""
The emulator's ``/openapi/v3``: what kubectl reads before it writes, so it works as against a real cluster.

kubectl validates by default (``--validate=strict``). It first asks the server's OpenAPI v3 document
whether the PATCH operation of the object's kind takes the ``fieldValidation`` parameter; when it does,
kubectl leaves validation to the server (it sends ``fieldValidation=Strict``, and the emulator refuses
unknown fields, checks schemas and CEL rules); only when no document can be read does it give up with
"failed to download openapi". ``kubectl explain`` reads the schemas of custom resources from the same
documents.

Served, as a real API server lays it out:

* ``/openapi/v3``: ``{"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=…"}, …}}``, one
  entry per served group/version; the hash changes with the document, so kubectl's cache follows CRDs;
* ``/openapi/v3/api/v1``, ``/openapi/v3/apis/<group>/<version>``: the REST paths of every resource of
  that group/version, each operation marked with ``x-kubernetes-action`` and
  ``x-kubernetes-group-version-kind``, the write operations with ``dryRun``, ``fieldManager`` and
  ``fieldValidation``; for custom resources, their CRD's ``openAPIV3Schema`` under ``components``.

Not served: the schemas of built-in kinds (``kubectl explain deployment`` finds nothing), and
``/openapi/v2``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]

__all__ = ["ServedResource", "group_version_document", "group_version_key", "root_document"]


@dataclass(frozen=True)
class ServedResource:
    """One resource of a group/version, as the OpenAPI document describes it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: frozenset[str]
    subresources: frozenset[str] = frozenset()
    schema: JSON | None = None  # a custom resource's openAPIV3Schema


def group_version_key(group: str, version: str) -> str:
    """``api/v1`` for the core group, ``apis/<group>/<version>`` otherwise (the keys of the root document)."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def document_hash(document: JSON) -> str:
    return hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest().upper()


def root_document(documents: dict[str, JSON]) -> JSON:
    """The ``/openapi/v3`` index: each group/version key with the URL of its document, hashed."""
    return {
        "paths": {
            key: {"serverRelativeURL": f"/openapi/v3/{key}?hash={document_hash(doc)}"}
            for key, doc in sorted(documents.items())
        }
    }


def _schema_name(resource: ServedResource) -> str:
    """A custom resource's schema is named by its reversed group: ``dev.tourniquet.v1alpha1.AgentDeployment``."""
    reversed_group = ".".join(reversed(resource.group.split("."))) if resource.group else "io.k8s.api.core"
    return f"{reversed_group}.{resource.version}.{resource.kind}"


def _parameter(name: str, where: str, description: str, *, required: bool = False) -> JSON:
    parameter: JSON = {
        "name": name,
        "in": where,
        "description": description,
        "schema": {"type": "string", "uniqueItems": True},
    }
    if required:
        parameter["required"] = True
    return parameter


_WRITE_PARAMETERS = [
    _parameter("dryRun", "query", "When present, modifications are not persisted. Valid value: All."),
    _parameter("fieldManager", "query", "The name of the actor making the change."),
    _parameter(
        "fieldValidation",
        "query",
        "How the server treats unknown or duplicate fields: Ignore, Warn (the default) or Strict.",
    ),
]
_PATCH_PARAMETERS = [*_WRITE_PARAMETERS, _parameter("force", "query", "Force an apply request (apply patches only).")]
_PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
)


def _operation(
    resource: ServedResource,
    action: str,
    summary: str,
    *,
    kind: str | None = None,
    parameters: list[JSON] | None = None,
) -> JSON:
    content = {"application/json": {"schema": _response_schema(resource)}}
    operation: JSON = {
        "description": summary,
        "operationId": f"{action}{resource.kind}",
        "responses": {"200": {"description": "OK", "content": content}, "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {
            "group": resource.group,
            "version": resource.version,
            "kind": kind or resource.kind,
        },
    }
    if parameters:
        operation["parameters"] = parameters
    return operation


def _response_schema(resource: ServedResource) -> JSON:
    return {"$ref": f"#/components/schemas/{_schema_name(resource)}"} if resource.schema else {"type": "object"}


def _with_body(operation: JSON, content_types: tuple[str, ...]) -> JSON:
    operation["requestBody"] = {"content": {t: {"schema": {"type": "object"}} for t in content_types}, "required": True}
    return operation


def _paths(resource: ServedResource) -> dict[str, JSON]:
    base = f"/{group_version_key(resource.group, resource.version)}"
    scoped = (
        f"{base}/namespaces/{{namespace}}/{resource.plural}" if resource.namespaced else f"{base}/{resource.plural}"
    )
    shared = [_parameter("namespace", "path", "The object's namespace.", required=True)] if resource.namespaced else []
    named = [_parameter("name", "path", f"The {resource.kind}'s name.", required=True), *shared]
    verbs, kind = resource.verbs, resource.kind
    collection: JSON = {"parameters": shared}
    if "list" in verbs:
        collection["get"] = _operation(resource, "list", f"list objects of kind {kind}")
    if "create" in verbs:
        collection["post"] = _with_body(
            _operation(resource, "post", f"create a {kind}", parameters=_WRITE_PARAMETERS), ("application/json",)
        )
    if "deletecollection" in verbs:
        collection["delete"] = _operation(resource, "deletecollection", f"delete a collection of {kind}")
    item: JSON = {"parameters": named}
    if "get" in verbs:
        item["get"] = _operation(resource, "get", f"read the specified {kind}")
    if "update" in verbs:
        item["put"] = _with_body(
            _operation(resource, "put", f"replace the specified {kind}", parameters=_WRITE_PARAMETERS),
            ("application/json",),
        )
    if "patch" in verbs:
        item["patch"] = _with_body(
            _operation(resource, "patch", f"partially update the specified {kind}", parameters=_PATCH_PARAMETERS),
            _PATCH_TYPES,
        )
    if "delete" in verbs:
        item["delete"] = _operation(resource, "delete", f"delete a {kind}")
    paths = {scoped: collection, f"{scoped}/{{name}}": item}
    if resource.namespaced and "list" in verbs:
        paths[f"{base}/{resource.plural}"] = {"get": _operation(resource, "list", f"list {kind} in all namespaces")}
    for sub in sorted(resource.subresources):
        sub_kind = "Scale" if sub == "scale" else kind
        paths[f"{scoped}/{{name}}/{sub}"] = {
            "parameters": named,
            "get": _operation(resource, "get", f"read {sub} of the specified {kind}", kind=sub_kind),
            "put": _with_body(
                _operation(
                    resource,
                    "put",
                    f"replace {sub} of the specified {kind}",
                    kind=sub_kind,
                    parameters=_WRITE_PARAMETERS,
                ),
                ("application/json",),
            ),
            "patch": _with_body(
                _operation(
                    resource,
                    "patch",
                    f"partially update {sub} of the specified {kind}",
                    kind=sub_kind,
                    parameters=_PATCH_PARAMETERS,
                ),
                _PATCH_TYPES,
            ),
        }
    return paths


def _component(resource: ServedResource) -> JSON:
    schema = json.loads(json.dumps(resource.schema))
    properties = schema.setdefault("properties", {})
    properties.setdefault("apiVersion", {"type": "string", "description": "APIVersion of this representation."})
    properties.setdefault("kind", {"type": "string", "description": "The REST resource this object represents."})
    properties.setdefault("metadata", {"type": "object", "description": "Standard object's metadata."})
    schema["x-kubernetes-group-version-kind"] = [
        {"group": resource.group, "version": resource.version, "kind": resource.kind}
    ]
    return schema


def group_version_document(group: str, version: str, resources: list[ServedResource], server_version: str) -> JSON:
    """The OpenAPI v3 document of one group/version."""
    paths: dict[str, JSON] = {}
    schemas: dict[str, JSON] = {}
    for resource in sorted(resources, key=lambda r: r.plural):
        paths.update(_paths(resource))
        if resource.schema:
            schemas[_schema_name(resource)] = _component(resource)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": server_version},
        "paths": paths,
        "components": {"schemas": schemas},
    }
