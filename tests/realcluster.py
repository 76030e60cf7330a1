"""The tests' view of the real control plane: the same helper methods as the emulator's `Cluster`, over HTTP.

One control plane per test session; each test gets a namespace of its own (the operator serves only it), and
the documents a test applies land there whatever namespace they name. The operator runs as a ServiceAccount
bound to exactly the roles the chart renders; set-up and assertions use an admin client certificate.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubemu import ApiError as EmulatorApiError
from tests.controlplane import ControlPlane

OPERATOR_NAMESPACE = "tourniquet-system"
OPERATOR_ACCOUNT = "tourniquet"
ONCALL_GROUP = "oncall"
_KIND_ORDER = {"CustomResourceDefinition": 0, "Namespace": 1}
PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


NOT_OURS = {"admin", "system:kube-controller-manager", "system:apiserver", "system:kube-scheduler"}
HTTP_METHODS = {
    "get": "GET",
    "list": "GET",
    "watch": "GET",
    "create": "POST",
    "update": "PUT",
    "patch": "PATCH",
    "delete": "DELETE",
    "deletecollection": "DELETE",
}


@dataclass(frozen=True)
class AuditCall:
    """One request as the API server's audit log recorded it (the emulator's request log has the same)."""

    method: str
    path: str
    user: str
    code: int
    body: Any = None


class ApiStatusError(EmulatorApiError):
    """The API server answered an error: its status code, reason and message. The emulator's error class, so a
    test expecting a refusal catches either."""

    def __init__(self, code: int, body: dict[str, Any]) -> None:
        super().__init__(code, str(body.get("reason", "")), str(body.get("message", body)), body.get("details"))
        self.body = body

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"


class RealCluster:
    """Assertions and set-up against a real API server, in one namespace."""

    backend = "real"

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.plane = plane
        self.namespace = namespace
        self.operator_args: tuple[str, ...] = (f"--namespace={namespace}",)
        self._namespaced: dict[str, dict[str, bool]] = {}  # group/version -> plural -> namespaced

    # -- the Cluster helper methods -----------------------------------------------------------------------

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            answer: dict[str, Any] = self.request("GET", self.path(resource, name, namespace))
        except ApiStatusError as error:
            if error.code == 404:
                return None
            raise
        return answer

    def list(
        self, resource: str, namespace: str | None = "default", label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """`namespace` "default" (the emulator's) means this test's namespace; None: every namespace."""
        query = f"?labelSelector={urllib.parse.quote(label_selector)}" if label_selector else ""
        where = self._namespace(namespace) if namespace is not None else None
        path = self.path(resource, None, where, everywhere=namespace is None) + query
        items: list[dict[str, Any]] = self.request("GET", path)["items"]
        return items

    def apply(self, docs: Iterable[Mapping[str, Any] | None]) -> list[dict[str, Any]]:
        """Create, or server-side apply over, every document: CRDs first, then Namespaces, then the rest.
        Namespaced documents land in this test's namespace."""
        ordered = sorted(
            (dict(d) for d in docs if d), key=lambda d: _KIND_ORDER.get(str(d.get("kind")), len(_KIND_ORDER))
        )
        return [self._apply_one(doc) for doc in ordered]

    def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        subresource: str | None = None,
        patch_type: str = "merge",
    ) -> dict[str, Any]:
        path = self.path(resource, name, namespace, subresource=subresource)
        answer: dict[str, Any] = self.request("PATCH", path, patch, content_type=PATCH_TYPES[patch_type])
        return answer

    def delete(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            answer = self.request("DELETE", self.path(resource, name, namespace))
        except ApiStatusError as error:
            if error.code == 404:
                return None
            raise
        # A Status means it is gone; the object itself, that finalizers keep it.
        return answer if isinstance(answer, dict) and answer.get("kind") != "Status" else None

    def status(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        status: dict[str, Any] = (self.get(resource, name, namespace) or {}).get("status") or {}
        return status

    def pods(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.list("v1/pods", self.namespace, label_selector=label_selector)

    # -- the request log, from the API server's audit log ------------------------------------------------------

    def mark(self) -> int:
        """Where the request log is now; pass it as `since` to writes() and requests_to()."""
        return self.plane.audit_log.stat().st_size

    def calls(self, since: int = 0) -> list[AuditCall]:
        """Every request since `since` from someone other than the tests and the control plane itself: the
        operator, the CLI, kubectl. Each request once (a watch has two audit stages)."""
        events, _ = self.plane.audit_events(since)
        seen: set[str] = set()
        calls = []
        for event in events:
            user = (event.get("user") or {}).get("username", "")
            if user in NOT_OURS or user.startswith("system:serviceaccount:kube-system:") or event["auditID"] in seen:
                continue
            seen.add(event["auditID"])
            path = event["requestURI"].split("?", 1)[0]
            if f"/namespaces/{self.namespace}/" not in path + "/" and "/namespaces/" in path:
                continue  # another test's namespace
            calls.append(
                AuditCall(
                    HTTP_METHODS.get(event["verb"], event["verb"].upper()),
                    path,
                    user,
                    (event.get("responseStatus") or {}).get("code", 0),
                    event.get("requestObject"),
                )
            )
        return calls

    def writes(self, resource: str | None = None, since: int = 0) -> list[AuditCall]:
        """Every POST/PUT/PATCH/DELETE since `since` (of `resource`, e.g. "v1/configmaps", when given)."""
        prefix = plural = ""
        if resource is not None:
            group_version, _, plural = resource.rpartition("/")
            prefix = ("/api/" if "/" not in group_version else "/apis/") + group_version + "/"
        return [
            call
            for call in self.calls(since)
            if call.method != "GET" and call.path.startswith(prefix) and f"/{plural}" in call.path
        ]

    def requests_to(self, path_part: str, since: int = 0) -> list[str]:
        """Every request (reads too) since `since` whose path contains `path_part`, as "METHOD path". The
        emulator's paths say "default" where this test's namespace is: both spellings match."""
        path_part = path_part.replace("/namespaces/default/", f"/namespaces/{self.namespace}/")
        return [f"{c.method} {c.path}" for c in self.calls(since) if path_part in c.path]

    def fault(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("faults are injected into the emulator only: mark the test @pytest.mark.emulator")

    # -- HTTP -----------------------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        """One request as admin. 429 (e.g. "storage is (re)initializing" just after a CRD is established) is
        retried for up to 30 s, as every Kubernetes client does."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return self.plane.request(method, path, body, content_type)
            except urllib.error.HTTPError as error:
                raw = error.read()
                try:
                    decoded = json.loads(raw)
                except ValueError:
                    decoded = {"message": raw.decode(errors="replace")}
                if error.code == 429 and time.monotonic() < deadline:
                    time.sleep(float(error.headers.get("Retry-After") or 1) / 4)
                    continue
                raise ApiStatusError(error.code, decoded) from None

    def _namespace(self, namespace: str | None) -> str:
        return self.namespace if namespace in (None, "default") else namespace  # type: ignore[return-value]

    def path(
        self,
        resource: str,
        name: str | None = None,
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        everywhere: bool = False,
    ) -> str:
        group_version, _, plural = resource.rpartition("/")
        base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
        if self.namespaced(group_version, plural) and not everywhere:
            base += f"/namespaces/{self._namespace(namespace)}"
        base += f"/{plural}"
        if name:
            base += f"/{urllib.parse.quote(name)}"
        if subresource:
            base += f"/{subresource}"
        return base

    def namespaced(self, group_version: str, plural: str) -> bool:
        known = self._namespaced.get(group_version)
        if known is None or plural not in known:
            prefix = "/api/" if "/" not in group_version else "/apis/"
            resources = self.request("GET", prefix + group_version)["resources"]
            known = {r["name"]: bool(r["namespaced"]) for r in resources}
            self._namespaced[group_version] = known
        if plural not in known:
            raise KeyError(f"{group_version} serves no {plural}")
        return known[plural]

    def served(self, group_version: str) -> bool:
        """Whether discovery lists the group/version now."""
        try:
            self.request("GET", ("/api/" if "/" not in group_version else "/apis/") + group_version)
        except ApiStatusError as error:
            if error.code == 404:
                self._namespaced.pop(group_version, None)
                return False
            raise
        return True

    def plural_of(self, api_version: str, kind: str) -> str:
        prefix = "/api/" if "/" not in api_version else "/apis/"
        for r in self.request("GET", prefix + api_version)["resources"]:
            if r["kind"] == kind and "/" not in r["name"]:
                return str(r["name"])
        raise KeyError(f"{api_version} serves no kind {kind}")

    def _apply_one(self, doc: dict[str, Any]) -> dict[str, Any]:
        api_version, kind = str(doc["apiVersion"]), str(doc["kind"])
        meta = {k: v for k, v in (doc.get("metadata") or {}).items() if k not in ("resourceVersion", "uid")}
        if kind == "CustomResourceDefinition":
            applied = self._server_side_apply(
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{meta['name']}", {**doc, "metadata": meta}
            )
            self.wait_established(meta["name"])
            return applied
        plural = self.plural_of(api_version, kind)
        if self.namespaced(api_version, plural):
            meta["namespace"] = self.namespace
        path = self.path(f"{api_version}/{plural}", meta["name"], meta.get("namespace"))
        return self._server_side_apply(path, {**doc, "metadata": meta})

    def _server_side_apply(self, path: str, doc: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self.request(
            "PATCH", f"{path}?fieldManager=tests&force=true", doc, content_type="application/apply-patch+yaml"
        )
        return answer

    def wait_established(self, crd: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
            conditions = {c["type"]: c["status"] for c in (body.get("status") or {}).get("conditions") or []}
            if conditions.get("Established") == "True":
                group, version = body["spec"]["group"], body["spec"]["versions"][0]["name"]
                self._namespaced.pop(f"{group}/{version}", None)
                return
            time.sleep(0.1)
        raise TimeoutError(f"CRD {crd} not Established after {timeout}s")

    def allowed(
        self, user: str, groups: list[str], group: str, resource: str, verb: str, *, cluster_scope: bool = False
    ) -> bool:
        """Whether the API server's authorizer lets `user` do `verb` on `resource` in this namespace now (or in
        every namespace, at the cluster scope)."""
        plural, _, sub = resource.partition("/")
        attributes = {"verb": verb, "group": group, "resource": plural}
        if not cluster_scope:
            attributes["namespace"] = self.namespace
        if sub:
            attributes["subresource"] = sub
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": [*groups, "system:authenticated"], "resourceAttributes": attributes},
        }
        answer = self.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
        return bool(answer["status"].get("allowed"))

    def wait_denied(
        self, user: str, groups: list[str], group: str, resource: str, verb: str, *, cluster_scope: bool = False
    ) -> None:
        """RBAC changes reach the authorizer through a watch: wait until a removed grant is really gone."""
        deadline = time.monotonic() + 15
        while self.allowed(user, groups, group, resource, verb, cluster_scope=cluster_scope):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{user} may still {verb} {resource} ({group or 'core'}) after 15s")
            time.sleep(0.1)

    def wait_allowed(self, user: str, groups: list[str], group: str, resource: str, verb: str) -> None:
        deadline = time.monotonic() + 15
        while not self.allowed(user, groups, group, resource, verb):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{user} may not {verb} {resource} ({group or 'core'}) after 15s")
            time.sleep(0.1)

    # -- namespaces -----------------------------------------------------------------------------------------

    @classmethod
    def in_new_namespace(cls, plane: ControlPlane, prefix: str = "t") -> RealCluster:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        plane.request(
            "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        )
        return cls(plane, name)

    def remove_namespace(self) -> None:
        """Delete the test's namespace without waiting; finalizers no operator will remove are stripped."""
        for resource in ("tourniquet.dev/v1alpha1/agentincidents", "tourniquet.dev/v1alpha1/agentdeployments"):
            with contextlib.suppress(ApiStatusError, KeyError):
                for obj in self.list(resource, self.namespace):
                    if obj["metadata"].get("finalizers"):
                        with contextlib.suppress(ApiStatusError):
                            self.patch(resource, obj["metadata"]["name"], {"metadata": {"finalizers": None}})
        with contextlib.suppress(ApiStatusError):
            self.request("DELETE", f"/api/v1/namespaces/{self.namespace}")


def write_user_kubeconfig(plane: ControlPlane, path: Path, user: str, groups: tuple[str, ...], namespace: str) -> Path:
    """A kubeconfig for a person: a client certificate for `user` in `groups`, defaulting to `namespace`."""
    from tests.controlplane import kubeconfig_document

    assert plane.pki is not None, "the control plane is not started"
    key, cert = plane.pki.issue(f"user-{user}", user, groups=groups)
    document = kubeconfig_document(
        plane.url, plane.ca_file, user, {"client-certificate": str(cert), "client-key": str(key)}, namespace
    )
    import yaml

    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    return path


def operator_account() -> tuple[str, str]:
    """The namespace and name of the ServiceAccount the chart creates for the operator."""
    from tests.chart.render import render_variant

    account = next(d for d in render_variant("default") if d["kind"] == "ServiceAccount")
    return account["metadata"]["namespace"], account["metadata"]["name"]
