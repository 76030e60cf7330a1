"""Fixtures for the tests of the sandbox API server (the realistic KMock emulator)."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import project_kubectl

from kubemu.server import ApiServerThread

WIDGET_CRD_YAML = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.dev
spec:
  group: example.dev
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames: [wd]
    categories: [all]
  versions:
    - name: v1
      served: true
      storage: true
      subresources:
        status: {}
        scale:
          specReplicasPath: .spec.size
          statusReplicasPath: .status.size
          labelSelectorPath: .status.selector
      selectableFields:
        - jsonPath: .spec.color
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [model]
              x-kubernetes-validations:
                - rule: "self.size <= 5 || self.scaleMode == 'scale'"
                  message: "size > 5 requires scaleMode=scale"
              properties:
                size: {type: integer, minimum: 0, maximum: 10, default: 1}
                scaleMode: {type: string, enum: [patch, scale], default: patch}
                color: {type: string}
                model:
                  type: object
                  required: [version]
                  properties:
                    name: {type: string}
                    version:
                      type: string
                      x-kubernetes-validations:
                        - rule: "!self.matches('^(latest|stable)$')"
                          message: "pin an exact model version; a floating version makes rollback impossible"
                consumers:
                  type: array
                  items:
                    type: object
                    required: [name]
                    properties:
                      name: {type: string}
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"""


@pytest.fixture()
def widget_crd() -> dict[str, Any]:
    """A CRD with a status and a scale subresource, defaults, an enum and two CEL rules."""
    return yaml.safe_load(WIDGET_CRD_YAML)


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "example.dev/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"model": {"name": "gpt", "version": "2025-01-01"}, **spec},
    }


def deployment(name: str, replicas: int = 3, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "example/agent:1.0"}]},
            },
        },
    }


@pytest.fixture()
def make_widget() -> Any:
    """``make_widget(name, **spec)``: a valid Widget manifest."""
    return widget


@pytest.fixture()
def make_deployment() -> Any:
    """``make_deployment(name, replicas=3, **labels)``: a valid Deployment manifest."""
    return deployment


class Http:
    """A minimal synchronous client: returns ``(status, parsed JSON body, headers)``."""

    def __init__(self, base: str) -> None:
        self.base = base

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> tuple[int, Any, dict[str, str]]:
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = (body if isinstance(body, bytes) else json.dumps(body).encode()) if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw, status, headers = resp.read(), resp.status, dict(resp.headers)
        except urllib.error.HTTPError as e:
            raw, status, headers = e.read(), e.code, dict(e.headers)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode()
        return status, parsed, headers

    def get(self, path: str, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("PUT", path, body, **kw)

    def patch(self, path: str, body: Any, kind: str = "merge", **kw: Any) -> tuple[int, Any, dict[str, str]]:
        content_type = {
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "apply": "application/apply-patch+yaml",
        }[kind]
        return self.request("PATCH", path, body, content_type=content_type, **kw)

    def delete(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("DELETE", path, body, **kw)

    def watch(
        self, path: str, query: dict[str, str], *, timeout: float = 10
    ) -> tuple[str, list[dict[str, Any]]]:
        """Read a watch stream until the server closes it; returns (content type, events)."""
        url = f"{self.base}{path}?{urllib.parse.urlencode({'watch': 'true', **query})}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            content_type = resp.headers.get("Content-Type", "")
            lines = resp.read().decode().splitlines()
        return content_type, [json.loads(line) for line in lines if line.strip()]


@pytest.fixture()
def make_http() -> type[Http]:
    """``make_http(url)``: an :class:`Http` client for another server than the ``api`` fixture."""
    return Http


@pytest.fixture()
def api() -> Iterator[ApiServerThread]:
    """The emulator served from its own thread on a random port."""
    with ApiServerThread() as server:
        yield server


@pytest.fixture()
def http(api: ApiServerThread) -> Http:
    return Http(api.url)


@pytest.fixture()
def kube_client(api: ApiServerThread) -> Iterator[Any]:
    """A ``kubernetes`` client (v37) pointed at the emulator."""
    import kubernetes

    config = kubernetes.client.Configuration(host=api.url)
    with kubernetes.client.ApiClient(config) as client:
        yield client


@pytest.fixture()
def emulator_kubeconfig(api: ApiServerThread, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture()
def kubectl(emulator_kubeconfig: Path, tmp_path: Path) -> Any:
    """Run the project's kubectl (pinned in pyproject.toml) against the emulator."""
    prefix = [project_kubectl(), f"--kubeconfig={emulator_kubeconfig}", f"--cache-dir={tmp_path / 'kube-cache'}"]

    def run(
        *args: str, check: bool = True, timeout: float = 20, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=timeout, input=stdin
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def start(*args: str) -> subprocess.Popen[str]:
        """Start a long-running kubectl (``get --watch``, ``wait``); the caller stops it."""
        return subprocess.Popen([*prefix, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    run.start = start  # type: ignore[attr-defined]
    return run
