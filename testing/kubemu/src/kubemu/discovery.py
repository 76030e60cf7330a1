"""Discovery: ``/version``, ``/api``, ``/apis``, every group/version, and ``/openapi/v3``."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import attrs

from kubemu import openapi
from kubemu.deletion import _Deleting
from kubemu.errors import _endpoint_not_found
from kubemu.resources import _Reply, _version_priority

if TYPE_CHECKING:
    from kubemu.errors import JSON


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


@attrs.define(kw_only=True)
class _Discovery(_Deleting):
    """The discovery documents."""

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
