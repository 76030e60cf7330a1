"""
A realistic Kubernetes API server in memory, built on KMock, for tests and for the sandbox mode.

:class:`RealisticEmulator` serves the Kubernetes REST API over HTTP (through ``kmock.Server``, the
``kmock`` pytest fixture, or :class:`tourniquet.sandbox.server.ApiServerThread`) with the semantics
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
  (see :mod:`tourniquet.sandbox.managedfields`);
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
  to the server) and ``kubectl explain`` works as against a real cluster (see :mod:`tourniquet.sandbox.openapi`);
* custom resources are pruned, defaulted and validated against their CRD's ``openAPIV3Schema``
  including ``x-kubernetes-validations`` CEL rules (see :mod:`tourniquet.sandbox.crvalidate`);
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

import asyncio
import base64
import bisect
import collections
import dataclasses
import datetime
import functools
import gzip
import importlib.resources
import json
import math
import random
import re
import traceback
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import dsl, k8s_dicts, references, rendering

from tourniquet.sandbox import crvalidate, managedfields, openapi

__all__ = [
    "ApiCall",
    "ApiError",
    "FaultHandle",
    "LabelSelector",
    "RealisticEmulator",
    "WatchFreeze",
    "json_patch",
    "merge_patch",
    "strategic_merge_patch",
]

SERVER_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.4",
    "gitCommit": "74cdb426a8a4b8e8e0b9f3c4e29e9bd6e0cc3a1f",
    "gitTreeState": "clean",
    "buildDate": "2025-08-12T00:00:00Z",
    "goVersion": "go1.24.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
UNDELETABLE_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})


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


@functools.lru_cache(maxsize=4096)
def _resource(group: str, version: str, plural: str) -> references.resource:
    """KMock's resource reference, built once per name (its constructor's protocol checks are slow)."""
    return references.resource(group, version, plural)


CRD_RESOURCE = references.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACES = references.resource("", "v1", "namespaces")
CRD_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"

# Built-ins whose metadata.generation the API server maintains: (group, plural).
GENERATION_TRACKED = frozenset(
    {
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("apps", "replicasets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
        ("", "replicationcontrollers"),
        ("networking.k8s.io", "networkpolicies"),
        ("networking.k8s.io", "ingresses"),
        ("policy", "poddisruptionbudgets"),
        ("autoscaling", "horizontalpodautoscalers"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
    }
)

# Built-ins with a /scale subresource and where their replicas & selector live.
BUILTIN_SCALABLE = frozenset(
    {
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "replicasets"),
        ("", "replicationcontrollers"),
    }
)

# Fields accepted in fieldSelector beyond metadata.name and metadata.namespace, per (group, plural).
FIELD_SELECTORS: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): frozenset(
        {
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    ("", "events"): frozenset(
        {
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        }
    ),
    ("events.k8s.io", "events"): frozenset(
        {
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reason",
            "reportingController",
            "type",
        }
    ),
    ("", "secrets"): frozenset({"type"}),
    ("", "namespaces"): frozenset({"status.phase"}),
    ("", "nodes"): frozenset({"spec.unschedulable"}),
    ("", "replicationcontrollers"): frozenset({"status.replicas"}),
    ("apps", "replicasets"): frozenset({"status.replicas"}),
    ("batch", "jobs"): frozenset({"status.successful"}),
}

OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
SERVER_MANAGED_META = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
)

# The patch merge keys of the built-in lists that strategic merge patch merges item by item.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "resourceClaims": "name",
    "topologySpreadConstraints": "topologyKey",
    "secrets": "name",
    "ports": "",  # '' = decided per list
}
MERGE_PRIMITIVE_LISTS = frozenset({"finalizers"})

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_DNS_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation "
    r"is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_DNS_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex "
    "used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
_GENERATE_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_STATUS_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

JSON = dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Errors as the API server reports them
# --------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An API failure rendered as a ``kind: Status`` body with its HTTP code."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        *,
        unknown_endpoint: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details) if details else None
        self.unknown_endpoint = unknown_endpoint

    @property
    def status(self) -> JSON:
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"ApiError({self.code}, {self.reason!r}, {self.message!r})"


def status_body(
    code: int, message: str | None = None, reason: str | None = None, details: Mapping[str, Any] | None = None
) -> JSON:
    """A ``kind: Status`` failure body for any HTTP code (used by fault injection too)."""
    reason = reason or _STATUS_REASONS.get(code, "InternalError" if code >= 500 else "BadRequest")
    message = message or {
        409: "the object has been modified; please apply your changes to the latest version and try again",
        429: "too many requests, please try again later",
        500: 'an error on the server ("injected fault") has prevented the request from succeeding',
        503: "the server is currently unable to handle the request",
        504: "the server was unable to return a response in the time allotted, but may still be processing",
    }.get(code, reason)
    return ApiError(code, reason, message, details).status


def _not_found(qualified: str, name: str, details: Mapping[str, Any]) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found', details)


def _endpoint_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {}, unknown_endpoint=True)


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


# --------------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------------


class _Requirement(NamedTuple):
    key: str
    op: str  # =, !=, in, notin, exists, !, gt, lt
    values: tuple[str, ...]


def _split_terms(text: str) -> list[str]:
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [term.strip() for term in terms if term.strip()]


_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_SET_TERM = re.compile(rf"^({_KEY})\s+(in|notin)\s+\((.*)\)$")
_OP_TERM = re.compile(rf"^({_KEY})\s*(==|!=|=|>|<)\s*([-A-Za-z0-9_.]*)$")


class LabelSelector:
    """A parsed label selector (string or structured form) that matches label dicts."""

    def __init__(self, requirements: Iterable[_Requirement] = ()) -> None:
        self.requirements = tuple(requirements)

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        """Parse ``a=b,c!=d,e in (f,g),!h,i``; raise ``ValueError`` on bad syntax."""
        requirements = []
        for term in _split_terms(text or ""):
            if term.startswith("!"):
                key = term[1:].strip()
                if not re.fullmatch(_KEY, key):
                    raise ValueError(f'unable to parse requirement: invalid label key "{key}"')
                requirements.append(_Requirement(key, "!", ()))
            elif match := _SET_TERM.match(term):
                values = tuple(v.strip() for v in match.group(3).split(",") if v.strip())
                requirements.append(_Requirement(match.group(1), match.group(2), values))
            elif match := _OP_TERM.match(term):
                op = {"==": "=", ">": "gt", "<": "lt"}.get(match.group(2), match.group(2))
                if op in ("gt", "lt") and not re.fullmatch(r"-?\d+", match.group(3)):
                    raise ValueError(
                        f'unable to parse requirement: for "{op}" operator, the value must be an integer: {term}'
                    )
                requirements.append(_Requirement(match.group(1), op, (match.group(3),)))
            elif re.fullmatch(_KEY, term):
                requirements.append(_Requirement(term, "exists", ()))
            else:
                raise ValueError(f"unable to parse requirement: found '{term}', expected: in, notin, =, ==, !=, gt, lt")
        return cls(requirements)

    @classmethod
    def from_structured(cls, selector: Mapping[str, Any] | None) -> LabelSelector:
        """Build from ``{matchLabels: {...}, matchExpressions: [...]}`` (as in Deployments)."""
        requirements = []
        for key, value in sorted(((selector or {}).get("matchLabels") or {}).items()):
            requirements.append(_Requirement(key, "=", (str(value),)))
        for expr in (selector or {}).get("matchExpressions") or ():
            op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}.get(expr.get("operator"), "")
            requirements.append(_Requirement(expr.get("key", ""), op, tuple(expr.get("values") or ())))
        return cls(requirements)

    def __str__(self) -> str:
        parts = []
        for req in self.requirements:
            match req.op:
                case "=" | "!=":
                    parts.append(f"{req.key}{req.op}{req.values[0]}")
                case "in" | "notin":
                    parts.append(f"{req.key} {req.op} ({','.join(sorted(req.values))})")
                case "exists":
                    parts.append(req.key)
                case "!":
                    parts.append(f"!{req.key}")
                case "gt":
                    parts.append(f"{req.key}>{req.values[0]}")
                case "lt":
                    parts.append(f"{req.key}<{req.values[0]}")
        return ",".join(parts)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def matches(self, labels: Mapping[str, Any] | None) -> bool:
        labels = labels or {}
        for req in self.requirements:
            present = req.key in labels
            value = str(labels.get(req.key)) if present else None
            match req.op:
                case "=":
                    ok = present and value == req.values[0]
                case "!=":
                    ok = not present or value != req.values[0]
                case "in":
                    ok = present and value in req.values
                case "notin":
                    ok = not present or value not in req.values
                case "exists":
                    ok = present
                case "!":
                    ok = not present
                case "gt" | "lt":
                    try:
                        number = int(value) if value is not None else None
                    except ValueError:
                        number = None
                    bound = int(req.values[0])
                    ok = number is not None and (number > bound if req.op == "gt" else number < bound)
                case _:
                    ok = False
            if not ok:
                return False
        return True


def _get_path(obj: Any, dotted: str) -> Any:
    for part in dotted.strip(".").split("."):
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def _field_value(obj: Mapping[str, Any], field: str) -> str:
    value = _get_path(obj, "source.component" if field == "source" else field)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _FieldSelector:
    def __init__(self, terms: Iterable[tuple[str, str, str]] = ()) -> None:
        self.terms = tuple(terms)

    @classmethod
    def parse(cls, text: str | None, allowed: frozenset[str], *, custom: bool) -> _FieldSelector:
        terms = []
        for term in _split_terms(text or ""):
            match = re.fullmatch(r"([^=!]+?)\s*(==|!=|=)\s*(.*)", term)
            if not match:
                raise _bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
            field, op, value = match.group(1).strip(), match.group(2), match.group(3).strip()
            if field not in allowed:
                if custom:
                    raise _bad_request(
                        f'"{field}" is not a known field selector: only '
                        f"{', '.join(json.dumps(f) for f in sorted(allowed))}"
                    )
                raise _bad_request(f"field label not supported: {field}")
            terms.append((field, "!=" if op == "!=" else "=", value))
        return cls(terms)

    def __bool__(self) -> bool:
        return bool(self.terms)

    def exact_name(self) -> str | None:
        for field, op, value in self.terms:
            if field == "metadata.name" and op == "=":
                return value
        return None

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for field, op, value in self.terms:
            actual = _field_value(obj, field)
            if (actual == value) != (op == "="):
                return False
        return True


# --------------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------------


def _clone(value: Any) -> Any:
    """A deep copy of JSON data (faster than copy.deepcopy for plain dicts/lists)."""
    if isinstance(value, dict):
        return {key: _clone(sub) for key, sub in value.items()}
    if isinstance(value, list | tuple):
        return [_clone(sub) for sub in value]
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch; returns a new value (the target is not modified)."""
    if not isinstance(patch, Mapping):
        return _clone(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch; raise :class:`ApiError` 422 when an op (e.g. ``test``) fails."""
    if not isinstance(operations, list):
        raise _bad_request("the body of the request was in an unknown format - JSON patch must be an array")
    try:
        return jsonpatch.apply_patch(_clone(target), operations, in_place=True)
    except jsonpatch.JsonPatchTestFailed as e:
        raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {e}") from e
    except (
        jsonpatch.JsonPatchException,
        jsonpointer.JsonPointerException,
        KeyError,
        IndexError,
        TypeError,
    ) as e:
        raise ApiError(
            422,
            "Invalid",
            f"the server rejected our request due to an error in our request: jsonpatch operation failed: {e}",
        ) from e


def _merge_key(field: str, *lists: Any) -> str | None:
    key = MERGE_KEYS.get(field)
    if key is None:
        return None
    if key == "":  # container ports merge on containerPort, service ports on port
        items = [item for items in lists if isinstance(items, list) for item in items if isinstance(item, Mapping)]
        return "containerPort" if any("containerPort" in item for item in items) else "port"
    return key


def _strategic_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    if field in MERGE_PRIMITIVE_LISTS:
        result = list(current) if isinstance(current, list) else []
        result.extend(item for item in patch if item not in result)
        return _clone(result)
    key = _merge_key(field, current, patch)
    if key is None or not all(isinstance(item, Mapping) for item in patch):
        return _clone(patch)
    if any(item.get("$patch") == "replace" for item in patch):
        return [_strip_directives(item) for item in patch if item.get("$patch") != "replace"]
    result = [_clone(item) for item in current] if isinstance(current, list) else []
    for item in patch:
        index = next(
            (i for i, old in enumerate(result) if isinstance(old, Mapping) and old.get(key) == item.get(key)),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(_strip_directives(item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _strip_directives(item: Mapping[str, Any]) -> Any:
    return strategic_merge_patch({}, item)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """
    Apply a strategic merge patch, approximately.

    Maps merge recursively (``null`` deletes a key). Lists in :data:`MERGE_KEYS` merge item by item
    on their patch merge key (``containers`` by ``name``, ``volumeMounts`` by ``mountPath``,
    ``conditions`` by ``type``, container ``ports`` by ``containerPort``, ...); ``finalizers`` merge as
    a set; every other list is replaced. Directives: ``$patch: replace|delete`` (on maps and list
    items), ``$retainKeys``, ``$deleteFromPrimitiveList/<field>``; ``$setElementOrder/<field>`` is
    accepted and ignored.
    """
    if not isinstance(patch, Mapping):
        return _clone(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {key: _clone(value) for key, value in patch.items() if key != "$patch"}
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [item for item in result[field] if item not in (value or [])]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping):
            if value.get("$patch") == "delete":
                result.pop(key, None)
            else:
                result[key] = strategic_merge_patch(result.get(key), value)
        elif isinstance(value, list):
            result[key] = _strategic_list(key, result.get(key), value)
        else:
            result[key] = value
    if isinstance(patch.get("$retainKeys"), list):
        result = {key: value for key, value in result.items() if key in patch["$retainKeys"]}
    return result


# --------------------------------------------------------------------------------------------------
# Protobuf bodies (kubectl's typed commands: `kubectl create configmap|secret|namespace`)
# --------------------------------------------------------------------------------------------------


def _pb_varint(data: bytes, index: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[index]
        index += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, index
        shift += 7


def _pb_fields(data: bytes) -> Iterator[tuple[int, Any]]:
    """Yield ``(field number, value)``: ints for varints, bytes for length-delimited fields."""
    index = 0
    while index < len(data):
        key, index = _pb_varint(data, index)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, index = _pb_varint(data, index)
        elif wire == 2:
            length, index = _pb_varint(data, index)
            value, index = data[index : index + length], index + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, index = data[index : index + size], index + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def _pb_map(entries: Iterable[bytes], *, binary: bool = False) -> dict[str, str]:
    result = {}
    for entry in entries:
        fields = dict(_pb_fields(entry))
        value = fields.get(2, b"")
        result[fields.get(1, b"").decode()] = base64.b64encode(value).decode() if binary else value.decode()
    return result


def _pb_object_meta(data: bytes) -> JSON:
    meta: JSON = {}
    strings = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion"}
    labels, annotations, finalizers, owners = [], [], [], []
    for number, value in _pb_fields(data):
        if number in strings and value:
            meta[strings[number]] = value.decode()
        elif number == 11:
            labels.append(value)
        elif number == 12:
            annotations.append(value)
        elif number == 13:
            owners.append(value)
        elif number == 14:
            finalizers.append(value.decode())
    if labels:
        meta["labels"] = _pb_map(labels)
    if annotations:
        meta["annotations"] = _pb_map(annotations)
    if finalizers:
        meta["finalizers"] = finalizers
    refs = []
    for owner in owners:
        fields = dict(_pb_fields(owner))
        ref = {
            key: fields[num].decode()
            for num, key in ((5, "apiVersion"), (1, "kind"), (3, "name"), (4, "uid"))
            if num in fields
        }
        ref.update(
            {key: bool(fields[num]) for num, key in ((6, "controller"), (7, "blockOwnerDeletion")) if num in fields}
        )
        refs.append(ref)
    if refs:
        meta["ownerReferences"] = refs
    return meta


def decode_protobuf(body: bytes) -> JSON:
    """
    Decode the Kubernetes protobuf envelope for the kinds kubectl creates imperatively.

    ``kubectl create configmap|secret|namespace`` send protobuf, not JSON. Only ConfigMap, Secret and
    Namespace are decoded; other kinds get a 415 that says to use ``kubectl apply -f`` (JSON).
    """
    if not body.startswith(b"k8s\x00"):
        raise _bad_request("the body of the request was in an unknown format - missing the protobuf envelope")
    envelope = dict(_pb_fields(body[4:]))
    type_meta = dict(_pb_fields(envelope.get(1, b"")))
    api_version, kind = type_meta.get(1, b"").decode(), type_meta.get(2, b"").decode()
    raw = envelope.get(2, b"")
    obj: JSON = {"apiVersion": api_version, "kind": kind}
    fields = list(_pb_fields(raw))
    for number, value in fields:
        if number == 1:
            obj["metadata"] = _pb_object_meta(value)
    match api_version, kind:
        case "v1", "ConfigMap":
            data = [v for n, v in fields if n == 2]
            binary = [v for n, v in fields if n == 3]
            if data:
                obj["data"] = _pb_map(data)
            if binary:
                obj["binaryData"] = _pb_map(binary, binary=True)
            for number, value in fields:
                if number == 4:
                    obj["immutable"] = bool(value)
        case "v1", "Secret":
            data = [v for n, v in fields if n == 2]
            if data:
                obj["data"] = _pb_map(data, binary=True)
            for number, value in fields:
                if number == 3 and value:
                    obj["type"] = value.decode()
            string_data = [v for n, v in fields if n == 4]
            if string_data:
                obj["stringData"] = _pb_map(string_data)
        case "v1", "Namespace":
            finalizers = [f.decode() for n, v in fields if n == 2 for m, f in _pb_fields(v) if m == 1]
            if finalizers:
                obj["spec"] = {"finalizers": finalizers}
        case _:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the emulator decodes protobuf only for ConfigMap, Secret "
                f"and Namespace, not {kind}: use `kubectl apply -f` (JSON)",
            )
    return obj


# --------------------------------------------------------------------------------------------------
# Built-in defaulting (the part of the API server's defaulters that operators usually notice)
# --------------------------------------------------------------------------------------------------


def _default_pod_spec(pod_spec: Any) -> None:
    if not isinstance(pod_spec, dict):
        return
    pod_spec.setdefault("restartPolicy", "Always")
    pod_spec.setdefault("terminationGracePeriodSeconds", 30)
    pod_spec.setdefault("dnsPolicy", "ClusterFirst")
    pod_spec.setdefault("securityContext", {})
    pod_spec.setdefault("schedulerName", "default-scheduler")
    for field in ("containers", "initContainers"):
        for container in pod_spec.get(field) or ():
            if not isinstance(container, dict):
                continue
            image = str(container.get("image", ""))
            tag = image.rsplit("/", 1)[-1].partition("@")[0].partition(":")[2]
            floating = "@" not in image and tag in ("", "latest")
            container.setdefault("imagePullPolicy", "Always" if floating else "IfNotPresent")
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            container.setdefault("resources", {})
            for port in container.get("ports") or ():
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")


def _default_template(spec: Any) -> None:
    if isinstance(spec, dict) and isinstance(spec.get("template"), dict):
        _default_pod_spec(spec["template"].get("spec"))


def apply_builtin_defaults(group: str, plural: str, obj: JSON) -> None:
    """Fill in the defaults a real API server gives the common built-in kinds (in place)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        spec = None
    match group, plural:
        case "apps", "deployments" if spec is not None:
            spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            strategy = spec.setdefault("strategy", {})
            if isinstance(strategy, dict):
                strategy.setdefault("type", "RollingUpdate")
                if strategy["type"] == "RollingUpdate":
                    rolling = strategy.setdefault("rollingUpdate", {})
                    if isinstance(rolling, dict):
                        rolling.setdefault("maxSurge", "25%")
                        rolling.setdefault("maxUnavailable", "25%")
            _default_template(spec)
        case "apps", "statefulsets" if spec is not None:
            spec.setdefault("replicas", 1)
            spec.setdefault("podManagementPolicy", "OrderedReady")
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
            spec.setdefault("persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
            _default_template(spec)
        case "apps", "replicasets" if spec is not None:
            spec.setdefault("replicas", 1)
            _default_template(spec)
        case "apps", "daemonsets" if spec is not None:
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault(
                "updateStrategy",
                {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            )
            _default_template(spec)
        case "batch", "jobs" if spec is not None:
            spec.setdefault("parallelism", 1)
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
            _default_template(spec)
        case "", "pods" if spec is not None:
            _default_pod_spec(spec)
        case "", "services" if spec is not None:
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("sessionAffinity", "None")
            for port in spec.get("ports") or ():
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")
                    if "port" in port:
                        port.setdefault("targetPort", port["port"])
        case "", "secrets":
            obj.setdefault("type", "Opaque")
            string_data = obj.pop("stringData", None)
            if isinstance(string_data, dict):
                data = obj.setdefault("data", {})
                for key, value in string_data.items():
                    data[key] = base64.b64encode(str(value).encode()).decode()
        case "networking.k8s.io", "networkpolicies" if spec is not None:
            if not spec.get("policyTypes"):
                spec["policyTypes"] = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
        case "", "namespaces":
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        case _:
            pass


# --------------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScalePaths:
    """Where a scalable resource keeps its replicas and selector (``/scale`` subresource)."""

    spec_replicas: str = ".spec.replicas"
    status_replicas: str = ".status.replicas"
    label_selector: str | None = None  # a path to a string selector (custom resources)
    structured_selector: bool = False  # built-ins: .spec.selector is a LabelSelector object


@dataclasses.dataclass
class _CustomVersion:
    crd_name: str
    storage: references.resource
    validator: crvalidate.SchemaValidator | None
    scale: ScalePaths | None
    selectable_fields: frozenset[str]
    printer_columns: tuple[JSON, ...] = ()
    schema: JSON | None = None  # the version's openAPIV3Schema, for /openapi/v3


@dataclasses.dataclass(frozen=True)
class ResourceSpec:
    """Everything the emulator needs to know about one served group/version/plural."""

    resource: references.resource
    storage: references.resource
    kind: str
    singular: str
    namespaced: bool
    subresources: frozenset[str]
    verbs: frozenset[str]
    custom: bool
    validator: crvalidate.SchemaValidator | None = None
    scale: ScalePaths | None = None
    selectable_fields: frozenset[str] = frozenset()

    @property
    def group(self) -> str:
        return self.resource.group or ""

    @property
    def version(self) -> str:
        return self.resource.version or ""

    @property
    def plural(self) -> str:
        return self.resource.plural or ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``deployments.apps`` or ``configmaps``, as in API error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def tracks_generation(self) -> bool:
        return self.custom or (self.group, self.plural) in GENERATION_TRACKED

    def details(self, name: str | None, *, kind: str | None = None) -> JSON:
        details: JSON = {"name": name or "", "kind": kind or self.plural}
        if self.group:
            details["group"] = self.group
        return details


_IMMUTABLE_FIELDS = {"configmaps": ("data", "binaryData"), "secrets": ("data",)}


def _immutable_errors(spec: ResourceSpec, obj: JSON, old: JSON | None) -> list[crvalidate.FieldError]:
    """A ConfigMap or Secret stored with ``immutable: true`` keeps its data and stays immutable (metadata may
    change, and it may be deleted), as the API server's update validation says."""
    fields = _IMMUTABLE_FIELDS.get(spec.plural) if spec.group == "" else None
    if not fields or old is None or old.get("immutable") is not True:
        return []
    changed = [] if obj.get("immutable") is True else ["immutable"]
    changed += [field for field in fields if (obj.get(field) or {}) != (old.get(field) or {})]
    return [crvalidate.FieldError(f, "Forbidden", detail="field is immutable when `immutable` is set") for f in changed]


def _latest(stored: k8s_dicts.Object) -> JSON | None:
    """The latest version of a stored object, without the copies KMock's public accessors make."""
    try:  # KMock 0.8 internals (the version is pinned): this is the hot path of every read
        items = stored.history._ObjectHistory__items  # type: ignore[attr-defined]
        latest = items[-1] if items else None
        return None if latest is None else latest._ObjectVersion__value
    except AttributeError:  # pragma: no cover  # a newer KMock: correct, only slower
        return None if stored.deleted else stored.raw


@functools.cache
def _bundled_resources() -> dict[references.resource, references.ResourceInfo]:
    """The built-in resources KMock bundles (a K3s discovery dump), parsed once per process."""
    data = importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
    resources = kmock.ResourcesArray()
    resources.load_data(gzip.decompress(data))
    return dict(resources._resources)


def _version_priority(version: str) -> tuple[int, int, int, str]:
    """Sort key of Kubernetes versions: GA > beta > alpha, higher numbers first, others last."""
    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not match:
        return (3, 0, 0, version)
    stability = {None: 0, "beta": 1, "alpha": 2}[match.group(2)]
    return (stability, -int(match.group(1)), -int(match.group(3) or 0), version)


# --------------------------------------------------------------------------------------------------
# Requests, faults and the request log
# --------------------------------------------------------------------------------------------------


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


@dataclasses.dataclass
class _Path:
    """A parsed request path."""

    group: str | None = None  # None: not an API resource path
    version: str | None = None
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse_api_path(path: str) -> _Path:
    """Split ``/apis/<g>/<v>/namespaces/<ns>/<plural>/<name>/<sub>`` (and the core ``/api/v1`` forms)."""
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return _Path()
    result = _Path(group=group, version=version)
    if not rest:
        return result
    if rest[0] == "namespaces" and group == "" and (len(rest) <= 2 or rest[2:] in (["status"], ["finalize"])):
        result.plural = "namespaces"
        result.name = rest[1] if len(rest) >= 2 else None
        result.subresource = rest[2] if len(rest) == 3 else None
        return result
    if rest[0] == "namespaces" and len(rest) >= 3:
        result.namespace = rest[1]
        rest = rest[2:]
    result.plural = rest[0]
    result.name = rest[1] if len(rest) >= 2 else None
    result.subresource = "/".join(rest[2:]) or None
    return result


# --------------------------------------------------------------------------------------------------
# Watching
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Event:
    rv: int
    type: str
    obj: JSON
    old: JSON | None = None


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


class _ServerList(list[Any]):
    """``RawHandler.servers``, telling the emulator when the last server goes (to end watch streams)."""

    def __init__(self, emulator: RealisticEmulator) -> None:
        super().__init__()
        self._emulator = emulator

    def append(self, server: Any) -> None:
        super().append(server)
        self._emulator._closing = False

    def remove(self, server: Any) -> None:
        super().remove(server)
        if not self:
            self._emulator.close_watches()


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


@dataclasses.dataclass
class _Reply:
    status: int
    body: Any
    warnings: list[str] = dataclasses.field(default_factory=list)

    def render(self) -> aiohttp.web.Response:
        headers = {}
        if self.warnings:
            headers["Warning"] = ", ".join(f"299 - {json.dumps(w)}" for w in self.warnings)
        if isinstance(self.body, str):
            return aiohttp.web.Response(text=self.body, status=self.status, headers=headers)
        return aiohttp.web.Response(
            body=_json_bytes(self.body), status=self.status, content_type="application/json", headers=headers
        )


@dataclasses.dataclass
class _WriteOptions:
    dry_run: bool = False
    field_validation: str = "Warn"  # Strict | Warn | Ignore
    warnings: list[str] = dataclasses.field(default_factory=list)
    manager: str = ""  # managedFields: '' for the emulator's own helpers (no entry is recorded)
    operation: str = "Update"  # Update | Apply
    subresource: str = ""  # set by a write through /scale
    applied: Any = None  # an apply's configuration

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> _WriteOptions:
        validation = params.get("fieldValidation") or "Warn"
        if validation not in ("Strict", "Warn", "Ignore"):
            raise _bad_request(f"fieldValidation must be one of Ignore, Warn, or Strict, got {validation!r}")
        return cls(dry_run=params.get("dryRun") == "All", field_validation=validation)


# --------------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------------

_BUILTIN_PRIORITY = (-math.inf,)


@attrs.define(kw_only=True)
class RealisticEmulator(kmock.KubernetesEmulator):
    """
    An in-memory Kubernetes API server with real API semantics (see the module docstring).

    Use it like any KMock handler: ``@pytest.mark.kmock(cls=RealisticEmulator)`` with the ``kmock``
    fixture, ``async with RealisticEmulator() as emu, kmock.Server(emu): ...``, or through
    :class:`tourniquet.sandbox.server.ApiServerThread` from synchronous code.

    User reactions registered with the KMock DSL take precedence over the emulation (that is how
    :meth:`inject_fault` works); a reaction that answers a write request leaves the stored objects
    untouched, as if an admission webhook had rejected it. The stored objects and their history are
    in ``emulator.objects`` (KMock's ``ObjectsArray``), keyed by the *storage* resource.
    """

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

    def __attrs_post_init__(self) -> None:
        # NB: the parent classes' fallback reactions are deliberately not registered: the emulator
        # routes requests itself (it is much faster than matching ~15 fallback reactions per request).
        object.__setattr__(self, "servers", _ServerList(self))
        if self.load_builtin_resources:
            for res, info in _bundled_resources().items():
                self._resources._resources[res] = attrs.evolve(info)
        for name in self.namespaces:
            self.create_object(NAMESPACES, {"metadata": {"name": name}})

    # ----------------------------------------------------------------------------------------------
    # HTTP entry point
    # ----------------------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Serve one HTTP request (the aiohttp low-level handler protocol), as ``RawHandler`` does."""
        raw_response: aiohttp.web.StreamResponse | None = None
        try:
            if self.limit is not None and self._request_seq >= self.limit:
                raise kmock.KMockError("Too many requests have been served so far.")
            request = await self._parse_request(raw_request)
            self._requests.append(request)
            if self.request_log_limit is not None and len(self._requests) > self.request_log_limit:
                del self._requests[: len(self._requests) - self.request_log_limit // 2]
            try:
                return await self._handle(request)
            except rendering.StreamingError as e:
                raw_response = e.args[0]
                raise e.__cause__ or e from None
        except Exception as e:
            if not self._errors:
                raise
            self._errors[-1].append(e)
            if raw_response is None or not raw_response.prepared:
                return await self._render_error(e)
            await self._stream_error(e, raw_response)
            await raw_response.write_eof()
            return raw_response

    async def _parse_request(self, raw: aiohttp.web.BaseRequest) -> rendering.Request:
        body = await raw.read()
        text = body.decode("utf-8", errors="replace")
        data: Any = None
        if body.strip():
            try:
                data = json.loads(text)
            except ValueError:
                if "yaml" in (raw.content_type or ""):
                    try:
                        data = yaml.safe_load(text)
                    except yaml.YAMLError:
                        data = None
        path = parse_api_path(raw.path)
        resource = None
        action = None
        if path.group is not None:
            resource = _resource(path.group, path.version, path.plural)
            if raw.method == "GET":
                action = (
                    kmock.action.WATCH
                    if raw.query.get("watch") in ("true", "1")
                    else (kmock.action.FETCH if path.name else kmock.action.LIST)
                )
            elif raw.method == "POST" and not path.name:
                action = kmock.action.CREATE
            elif raw.method in ("PATCH", "PUT") and path.name:
                action = kmock.action.UPDATE
            elif raw.method == "DELETE":
                action = kmock.action.DELETE
        self._request_seq += 1
        return rendering.Request(
            id=self._request_seq - 1,
            raw_request=raw,
            url=raw.url,
            method=raw.method,
            params=dict(raw.query),
            headers=dict(raw.headers),
            cookies=dict(raw.cookies),
            body=body,
            text=text,
            data=data,
            action=action,
            resource=resource,
            namespace=path.namespace,
            name=path.name,
            subresource=path.subresource,
        )

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        self._sync_index()
        response = await self._react(request, before_builtins=True)
        if response is not None:
            return response
        try:
            return await self._serve(request)
        except ApiError as e:
            if e.unknown_endpoint:
                response = await self._react(request, before_builtins=False)
                if response is not None:
                    return response
            return _Reply(e.code, e.status).render()

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

    # ----------------------------------------------------------------------------------------------
    # User reactions (KMock DSL), matched without scanning the request history
    # ----------------------------------------------------------------------------------------------

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
        with :class:`~tourniquet.sandbox.server.ApiServerThread`), call it through ``api.call(...)``::

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

    # ----------------------------------------------------------------------------------------------
    # Routing
    # ----------------------------------------------------------------------------------------------

    async def _serve(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        path = raw.path if raw is not None else request.url.path
        method = str(request.method.value).upper()
        discovery = self._serve_discovery(path) if method == "GET" else None
        if discovery is not None:
            return discovery.render()
        parsed = parse_api_path(path)
        if parsed.group is None or parsed.version is None or parsed.plural is None:
            raise _endpoint_not_found()
        spec = self._spec(parsed.group, parsed.version, parsed.plural)
        if spec is None:
            raise _endpoint_not_found()
        if parsed.namespace is not None and not spec.namespaced:
            raise _endpoint_not_found()
        params = dict(request.params)
        sub = parsed.subresource or ""
        if sub and sub not in spec.subresources:
            raise _endpoint_not_found()
        name, namespace = parsed.name, parsed.namespace
        verb = self._verb(method, name, params)
        if spec.verbs and verb not in spec.verbs and not (verb == "get" and sub):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if name is not None and spec.namespaced and namespace is None:
            raise _endpoint_not_found()

        if verb == "watch":
            return await self._stream_watch(request, spec, namespace, name, params)
        reply: _Reply
        wants_table = "as=Table" in (request.headers.get("Accept") or "") and spec.resource in self._custom
        match verb:
            case "list":
                listed = self._list(spec, namespace, params)
                reply = _Reply(
                    200, self._as_table(spec, listed["items"], listed["metadata"]) if wants_table else listed
                )
            case "get":
                got = self._get(spec, namespace, name or "", sub)
                reply = _Reply(200, self._as_table(spec, [got], {}) if wants_table and not sub else got)
            case "create":
                if name is not None:
                    raise ApiError(
                        405,
                        "MethodNotAllowed",
                        "the server does not allow this method on the requested resource",
                    )
                if spec.namespaced and namespace is None:
                    raise _endpoint_not_found()
                opts = self._write_options(params, request)
                created = self._create(spec, namespace, self._body(request), opts)
                reply = _Reply(201, created, opts.warnings)
            case "update":
                opts = self._write_options(params, request)
                reply = _Reply(
                    200,
                    self._replace(spec, namespace, name or "", sub, self._body(request), opts),
                    opts.warnings,
                )
            case "patch":
                opts = self._write_options(params, request)
                content_type = (raw.content_type if raw is not None else "") or ""
                status, result = self._patch(
                    spec, namespace, name or "", sub, content_type, request.data, request.text, opts
                )
                reply = _Reply(status, result, opts.warnings)
            case "delete":
                body = request.data if isinstance(request.data, dict) else {}
                status, result = self._delete(spec, namespace, name or "", params, body)
                reply = _Reply(status, result)
            case "deletecollection":
                reply = _Reply(200, self._delete_collection(spec, namespace, params))
            case _:
                raise ApiError(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
        return reply.render()

    @staticmethod
    def _write_options(params: Mapping[str, str], request: rendering.Request) -> _WriteOptions:
        opts = _WriteOptions.from_params(params)
        opts.manager = managedfields.manager_of(params.get("fieldManager"), request.headers.get("User-Agent"))
        return opts

    def _managed_fields(
        self, spec: ResourceSpec, old: JSON | None, new: JSON, opts: _WriteOptions, sub: str
    ) -> list[JSON]:
        """`new`'s managedFields after this write (see :mod:`tourniquet.sandbox.managedfields`)."""
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

    def _as_table(self, spec: ResourceSpec, items: list[JSON], list_meta: JSON) -> JSON:
        """A meta.k8s.io/v1 Table built from the CRD's additionalPrinterColumns, as `kubectl get` asks for."""
        columns = [
            {
                "name": "Name",
                "type": "string",
                "format": "name",
                "priority": 0,
                "description": "Name must be unique within a namespace.",
            }
        ]
        printer = list(self._custom[spec.resource].printer_columns) or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
        ]
        columns += [
            {
                "name": c["name"],
                "type": c.get("type", "string"),
                "format": c.get("format", ""),
                "description": c.get("description", ""),
                "priority": c.get("priority", 0),
            }
            for c in printer
        ]
        now = datetime.datetime.now(datetime.UTC)
        rows = []
        for obj in items:
            cells: list[Any] = [obj["metadata"]["name"]]
            for column in printer:
                value = _json_path(obj, column.get("jsonPath", ""))
                if column.get("type") == "date" and isinstance(value, str):
                    value = _age(value, now)
                elif isinstance(value, list):
                    value = ",".join(str(v) for v in value)
                cells.append(value)
            rows.append(
                {
                    "cells": cells,
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj["metadata"],
                    },
                }
            )
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": dict(list_meta),
            "columnDefinitions": columns,
            "rows": rows,
        }

    @staticmethod
    def _verb(method: str, name: str | None, params: Mapping[str, str]) -> str:
        if method == "GET":
            if params.get("watch") in ("true", "1"):
                return "watch"
            return "get" if name else "list"
        if method == "POST":
            return "create"
        if method == "PUT" and name:
            return "update"
        if method == "PATCH" and name:
            return "patch"
        if method == "DELETE":
            return "delete" if name else "deletecollection"
        return method.lower()

    @staticmethod
    def _body(request: rendering.Request) -> Any:
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type == "application/vnd.kubernetes.protobuf":
            return decode_protobuf(request.body)
        if content_type == "application/cbor":
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - "
                "accepted media types include: application/json, "
                "application/yaml",
            )
        if request.data is None and request.body.strip():
            raise _bad_request(
                "the body of the request was in an unknown format - "
                "accepted media types include: application/json, application/yaml"
            )
        return request.data

    # ----------------------------------------------------------------------------------------------
    # Discovery
    # ----------------------------------------------------------------------------------------------

    def _serve_discovery(self, path: str) -> _Reply | None:
        path = "/" + path.strip("/")
        parts = [part for part in path.split("/") if part]
        match parts:
            case []:
                paths = {"/api", "/api/v1", "/apis", "/version", "/healthz", "/livez", "/readyz"}
                for group, versions in self._groups().items():
                    paths.add(f"/apis/{group}")
                    paths.update(f"/apis/{group}/{version}" for version in versions)
                return _Reply(200, {"paths": sorted(paths)})
            case ["version"]:
                return _Reply(200, dict(SERVER_VERSION))
            case ["openapi", "v3"]:
                documents = {
                    openapi.group_version_key(group, version): self._openapi_document(group, version)
                    for group, version in self._group_versions()
                }
                return _Reply(200, openapi.root_document(documents))
            case ["openapi", "v3", *key]:
                found = next(
                    (gv for gv in self._group_versions() if openapi.group_version_key(*gv) == "/".join(key)), None
                )
                if found is None:
                    raise _endpoint_not_found()
                return _Reply(200, self._openapi_document(*found))
            case ["healthz" | "livez" | "readyz", *_]:
                return _Reply(200, "ok")
            case ["api"]:
                return _Reply(
                    200,
                    {
                        "kind": "APIVersions",
                        "versions": ["v1"],
                        "serverAddressByClientCIDRs": [
                            {"clientCIDR": "0.0.0.0/0", "serverAddress": self._server_address()}
                        ],
                    },
                )
            case ["api", "v1"]:
                return _Reply(200, self._resource_list("", "v1"))
            case ["apis"]:
                return _Reply(
                    200,
                    {
                        "kind": "APIGroupList",
                        "apiVersion": "v1",
                        "groups": [
                            self._group_doc(group, versions) for group, versions in sorted(self._groups().items())
                        ],
                    },
                )
            case ["apis", group]:
                groups = self._groups()
                if group not in groups:
                    raise _endpoint_not_found()
                return _Reply(200, {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group, groups[group])})
            case ["apis", group, version]:
                if version not in self._groups().get(group, []):
                    raise _endpoint_not_found()
                return _Reply(200, self._resource_list(group, version))
            case _:
                return None

    def _server_address(self) -> str:
        try:
            server = self.servers[0]
            return f"{server.host}:{server.port}"
        except (IndexError, RuntimeError):
            return "127.0.0.1:6443"

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, set[str]] = collections.defaultdict(set)
        for res in self._resources._resources:
            if res.group and res.version:
                groups[res.group].add(res.version)
        return {group: sorted(versions, key=_version_priority) for group, versions in groups.items()}

    def _group_versions(self) -> list[tuple[str, str]]:
        return [("", "v1")] + [(g, v) for g, versions in sorted(self._groups().items()) for v in versions]

    def _openapi_document(self, group: str, version: str) -> JSON:
        resources = []
        for res in self._resources._resources:
            if (res.group or "") != group or res.version != version or not res.plural:
                continue
            spec = self._spec(group, version, res.plural)
            if spec is None:
                continue
            custom = self._custom.get(res)
            resources.append(
                openapi.ServedResource(
                    group=group,
                    version=version,
                    plural=spec.plural,
                    kind=spec.kind,
                    namespaced=spec.namespaced,
                    verbs=spec.verbs,
                    subresources=spec.subresources,
                    schema=custom.schema if custom is not None else None,
                )
            )
        return openapi.group_version_document(group, version, resources, SERVER_VERSION["gitVersion"])

    @staticmethod
    def _group_doc(group: str, versions: list[str]) -> JSON:
        gvs = [{"groupVersion": f"{group}/{version}", "version": version} for version in versions]
        return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}

    def _resource_list(self, group: str, version: str) -> JSON:
        resources = []
        for res in sorted(self._resources._resources, key=lambda r: r.plural or ""):
            if res.group != group or res.version != version or not res.plural:
                continue
            spec = self._spec(group, version, res.plural)
            if spec is None:
                continue
            info = self._resources._resources[res]
            entry: JSON = {
                "name": spec.plural,
                "singularName": spec.singular,
                "namespaced": spec.namespaced,
                "kind": spec.kind,
                "verbs": sorted(spec.verbs),
            }
            if info.shortnames:
                entry["shortNames"] = sorted(info.shortnames)
            if info.categories:
                entry["categories"] = sorted(info.categories)
            resources.append(entry)
            for sub in sorted(spec.subresources):
                sub_entry: JSON = {
                    "name": f"{spec.plural}/{sub}",
                    "singularName": "",
                    "namespaced": spec.namespaced,
                    "kind": spec.kind,
                    "verbs": ["get", "patch", "update"],
                }
                if sub == "scale":
                    sub_entry.update(group="autoscaling", version="v1", kind="Scale")
                elif sub != "status":
                    sub_entry["verbs"] = ["create", "get"]
                resources.append(sub_entry)
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}".lstrip("/"),
            "resources": resources,
        }

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

    def resource_for(self, api_version: str, kind: str) -> references.resource:
        """Map ``apiVersion``/``kind`` to the served resource (``apps/v1`` + ``Deployment``)."""
        group, _, version = api_version.rpartition("/")
        for res, info in self._resources._resources.items():
            if res.group == group and res.version == version and info.kind == kind:
                return res
        raise KeyError(f"no resource serves kind {kind!r} in {api_version!r}")

    # ----------------------------------------------------------------------------------------------
    # Storage
    # ----------------------------------------------------------------------------------------------

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

    # ----------------------------------------------------------------------------------------------
    # Reads
    # ----------------------------------------------------------------------------------------------

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

    # ----------------------------------------------------------------------------------------------
    # Writes
    # ----------------------------------------------------------------------------------------------

    def _check_namespace_open(self, spec: ResourceSpec, namespace: str | None, name: str) -> None:
        if not spec.namespaced:
            return
        ns = self._live(NAMESPACES, None, namespace or "")
        if ns is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )
        if (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f'{spec.qualified} "{name}" is forbidden: unable to create new content '
                f"in namespace {namespace} because it is being terminated",
                spec.details(name),
            )

    def _normalize_metadata(self, spec: ResourceSpec, obj: JSON, opts: _WriteOptions) -> list[crvalidate.FieldError]:
        """Check and clean ``metadata`` the way the API server does for every kind."""
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise _bad_request(
                f'{spec.kind} in version "{spec.version}" cannot be handled as a {spec.kind}: '
                "metadata must be an object"
            )
        unknown = [key for key in meta if key not in OBJECT_META_FIELDS]
        self._unknown_fields(spec, [f"metadata.{key}" for key in unknown], opts)
        for key in unknown:
            del meta[key]
        meta.pop("managedFields", None)
        meta.pop("selfLink", None)
        errors: list[crvalidate.FieldError] = []
        for field in ("labels", "annotations"):
            values = meta.get(field)
            if values is None:
                meta.pop(field, None)
                continue
            if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
                raise _bad_request(
                    f'{spec.kind} in version "{spec.version}" cannot be handled as a {spec.kind}: '
                    f"json: cannot unmarshal into Go struct field ObjectMeta.metadata.{field} "
                    "of type map[string]string"
                )
        for key, value in (meta.get("labels") or {}).items():
            errors.extend(self._label_errors(key, value))
        for index, ref in enumerate(meta.get("ownerReferences") or []):
            for field in ("apiVersion", "kind", "name", "uid"):
                if not isinstance(ref, dict) or not ref.get(field):
                    errors.append(crvalidate.FieldError(f"metadata.ownerReferences[{index}].{field}", "Required"))
        finalizers = meta.get("finalizers")
        if finalizers is not None and not (
            isinstance(finalizers, list) and all(isinstance(f, str) for f in finalizers)
        ):
            raise _bad_request("metadata.finalizers must be a list of strings")
        return errors

    @staticmethod
    def _label_errors(key: str, value: str) -> list[crvalidate.FieldError]:
        errors = []
        prefix, _, name = key.rpartition("/")
        if (
            (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)))
            or not name
            or len(name) > 63
            or not _LABEL_NAME.fullmatch(name)
        ):
            errors.append(
                crvalidate.FieldError(
                    "metadata.labels",
                    "Invalid",
                    key,
                    "name part must consist of alphanumeric characters, '-', '_' or '.', "
                    "and must start and end with an alphanumeric character",
                )
            )
        if len(value) > 63:
            errors.append(
                crvalidate.FieldError("metadata.labels", "Invalid", value, "must be no more than 63 characters")
            )
        elif not _LABEL_VALUE.fullmatch(value):
            errors.append(crvalidate.FieldError("metadata.labels", "Invalid", value, _LABEL_VALUE_MSG))
        return errors

    @staticmethod
    def _unknown_fields(spec: ResourceSpec, paths: list[str], opts: _WriteOptions) -> None:
        if not paths:
            return
        if opts.field_validation == "Strict":
            listed = ", ".join(f'unknown field "{path}"' for path in paths)
            raise _bad_request(
                f'{spec.kind} in version "{spec.version}" cannot be handled as a {spec.kind}: '
                f"strict decoding error: {listed}"
            )
        if opts.field_validation == "Warn":
            opts.warnings.extend(f'unknown field "{path}"' for path in paths)

    def _invalid(self, spec: ResourceSpec, name: str, errors: list[crvalidate.FieldError]) -> ApiError:
        text = ", ".join(str(e) for e in errors)
        text = text if len(errors) == 1 else f"[{text}]"
        details = spec.details(name, kind=spec.kind)
        details["causes"] = [{"reason": e.reason, "message": e.message, "field": e.path or "<nil>"} for e in errors]
        return ApiError(422, "Invalid", f'{spec.qualified_kind} "{name}" is invalid: {text}', details)

    def _finish(self, spec: ResourceSpec, obj: JSON, old: JSON | None, opts: _WriteOptions, name: str) -> JSON:
        """Defaulting, pruning and validation shared by create and update. Returns the object to store."""
        errors = self._normalize_metadata(spec, obj, opts)
        if self.builtin_defaults and not spec.custom:
            apply_builtin_defaults(spec.group, spec.plural, obj)
        if spec.validator is not None:
            obj, unknown = spec.validator.prepare(obj, old=old)
            self._unknown_fields(spec, unknown, opts)
            errors.extend(spec.validator.validate(obj, old=old))
        errors.extend(self._builtin_errors(spec, obj))
        errors.extend(_immutable_errors(spec, obj, old))
        if errors:
            raise self._invalid(spec, name, errors)
        return obj

    def _builtin_errors(self, spec: ResourceSpec, obj: JSON) -> list[crvalidate.FieldError]:
        errors: list[crvalidate.FieldError] = []
        if (spec.group, spec.plural) in BUILTIN_SCALABLE:
            replicas = (obj.get("spec") or {}).get("replicas")
            if replicas is not None and (not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0):
                errors.append(
                    crvalidate.FieldError("spec.replicas", "Invalid", replicas, "must be greater than or equal to 0")
                )
            if spec.group == "apps" and isinstance(obj.get("spec"), dict):
                selector = obj["spec"].get("selector")
                template_labels = ((obj["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
                if not selector:
                    errors.append(crvalidate.FieldError("spec.selector", "Required"))
                elif not LabelSelector.from_structured(selector).matches(template_labels):
                    errors.append(
                        crvalidate.FieldError(
                            "spec.template.metadata.labels",
                            "Invalid",
                            template_labels,
                            "`selector` does not match template `labels`",
                        )
                    )
        if spec.plural == "configmaps" and spec.group == "":
            for field in ("data", "binaryData"):
                values = obj.get(field)
                if values is not None and (
                    not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values())
                ):
                    raise _bad_request(
                        f'ConfigMap in version "v1" cannot be handled as a ConfigMap: '
                        f"json: cannot unmarshal into Go struct field ConfigMap.{field} "
                        "of type map[string]string"
                    )
        if spec.resource == CRD_RESOURCE:
            errors.extend(self._crd_errors(obj))
        return errors

    def _check_identity(self, spec: ResourceSpec, obj: Any) -> JSON:
        if not isinstance(obj, dict):
            raise _bad_request("the body of the request was in an unknown format - the object must be a JSON object")
        api_version = obj.get("apiVersion")
        if api_version not in (None, spec.api_version):
            raise _bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({spec.api_version})"
            )
        kind = obj.get("kind")
        if kind not in (None, spec.kind):
            raise _bad_request(f"the kind in the data ({kind}) does not match the expected kind ({spec.kind})")
        # Custom resources are stored in the CRD's storage version (and converted back when read).
        storage = spec.storage
        head = {
            "apiVersion": f"{storage.group}/{storage.version}" if storage.group else storage.version,
            "kind": spec.kind,
        }
        return {**head, **{key: value for key, value in obj.items() if key not in head}}

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

    # ----------------------------------------------------------------------------------------------
    # Scale
    # ----------------------------------------------------------------------------------------------

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
                f"{crvalidate.format_value(replicas)}: must be greater than or equal to 0",
                {
                    "name": name,
                    "group": "autoscaling",
                    "kind": "Scale",
                    "causes": [
                        {
                            "reason": "FieldValueInvalid",
                            "field": "spec.replicas",
                            "message": f"Invalid value: {crvalidate.format_value(replicas)}: "
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

    # ----------------------------------------------------------------------------------------------
    # Deletion
    # ----------------------------------------------------------------------------------------------

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

    # ----------------------------------------------------------------------------------------------
    # Custom resource definitions
    # ----------------------------------------------------------------------------------------------

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

    def _finalize_crd(self, crd: JSON) -> None:
        crd_name = crd["metadata"]["name"]
        served = [res for res, c in self._custom.items() if c.crd_name == crd_name]
        storage = self._custom[served[0]].storage if served else None
        if storage is not None and any(self._live(storage, ns, n) is not None for ns, n in self._keys.get(storage, {})):
            return
        spec = self._spec("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        if spec is not None and CRD_FINALIZER in (crd["metadata"].get("finalizers") or []):
            self._remove_finalizer(spec, crd, CRD_FINALIZER)

    # ----------------------------------------------------------------------------------------------
    # Garbage collection (on demand only)
    # ----------------------------------------------------------------------------------------------

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

    # ----------------------------------------------------------------------------------------------
    # Synchronous helpers for tests and tools (call them in the emulator's event loop thread)
    # ----------------------------------------------------------------------------------------------

    def _spec_or_raise(self, resource: str | references.resource) -> ResourceSpec:
        try:
            return self.spec_for(resource)
        except KeyError as e:
            raise _endpoint_not_found() from e

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

    @property
    def resource_version(self) -> int:
        """The current global resourceVersion."""
        return self._rv

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, ApiError):
            return _Reply(exc.code, exc.status).render()
        body = status_body(
            500,
            f"{type(exc).__name__}: {exc}",
            details={"causes": [{"message": line} for line in traceback.format_exception(exc)[-3:]]},
        )
        return _Reply(500, body).render()


_JSON_PATH_FILTER = re.compile(r"^\[\?\(@\.([\w.-]+)\s*==\s*[\"']([^\"']*)[\"']\)\]")


def _json_path(obj: Any, path: str) -> Any:
    """The subset of JSONPath printer columns use: .a.b, [0], [?(@.k=="v")]. None when absent."""
    current: Any = obj
    rest = path.strip()
    while rest and current is not None:
        if rest.startswith("."):
            match = re.match(r"^\.([\w-]+)", rest)
            if match is None:
                return None
            current = current.get(match.group(1)) if isinstance(current, dict) else None
            rest = rest[match.end() :]
        elif (found := _JSON_PATH_FILTER.match(rest)) is not None:
            key, wanted = found.groups()
            current = next((i for i in current or [] if isinstance(i, dict) and str(i.get(key)) == wanted), None)
            rest = rest[found.end() :]
        elif (index := re.match(r"^\[(\d+)\]", rest)) is not None:
            position = int(index.group(1))
            current = current[position] if isinstance(current, list) and position < len(current) else None
            rest = rest[index.end() :]
        else:
            return None
    return current


def _age(timestamp: str, now: datetime.datetime) -> str:
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
