"""What the emulator knows about the resources it serves: names, scopes, /scale paths, request paths."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import gzip
import importlib.resources
import json
import math
import re
from typing import TYPE_CHECKING, Any

import aiohttp.web
import kmock
from kmock._internal import references

from kubemu import crvalidate

if TYPE_CHECKING:
    from kubemu.errors import JSON


DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


UNDELETABLE_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})


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


_BUILTIN_PRIORITY = (-math.inf,)


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
