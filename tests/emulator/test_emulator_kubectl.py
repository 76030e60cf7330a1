"""The project's kubectl against the emulator, with its default validation (the emulator serves /openapi/v3)."""

from __future__ import annotations

import json
import time
from typing import Any

import yaml

from kubemu.server import ApiServerThread


def test_kubectl_custom_resources(kubectl: Any, widget_crd: dict[str, Any], make_widget: Any) -> None:
    assert "created" in kubectl("apply", "-f", "-", stdin=yaml.safe_dump(widget_crd)).stdout
    kubectl("wait", "--for=condition=established", "crd/widgets.example.dev", "--timeout=5s")

    manifest = make_widget("w1", size=2)
    assert "created" in kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest)).stdout
    manifest["spec"]["size"] = 3
    assert "configured" in kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest)).stdout
    assert kubectl("get", "wd", "w1", "-o", "jsonpath={.spec.size}").stdout == "3"

    manifest["spec"]["model"]["version"] = "latest"
    result = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest), check=False)
    assert result.returncode == 1
    assert (
        'The Widget "w1" is invalid: spec.model.version: Invalid value: "latest": '
        "pin an exact model version; a floating version makes rollback impossible"
    ) in result.stderr

    kubectl("delete", "crd", "widgets.example.dev")
    assert kubectl("get", "widgets", check=False).returncode != 0


def test_kubectl_built_ins(kubectl: Any, make_deployment: Any) -> None:
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(make_deployment("web", replicas=3)))
    assert "scaled" in kubectl("scale", "deployment/web", "--replicas=0").stdout
    kubectl("label", "deploy", "web", "team=agents")
    assert kubectl("get", "deploy", "-l", "team=agents", "-o", "name").stdout.split() == ["deployment.apps/web"]
    kubectl(
        "patch",
        "deploy",
        "web",
        "-p",
        json.dumps(  # strategic merge: adds a container by name
            {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "proxy:1"}]}}}}
        ),
    )
    names = kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[*].name}").stdout
    assert names == "main sidecar"
    kubectl(
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        '[{"op": "replace", "path": "/spec/replicas", "value": 1}]',
    )
    assert kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.replicas}").stdout == "1"

    kubectl("create", "configmap", "imperative", "--from-literal=a=b")  # a protobuf body
    server_side = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1"}}
    kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(server_side))
    assert kubectl("get", "cm", "-o", "name").stdout.split() == ["configmap/imperative", "configmap/ssa"]


def wait_for_watches(api: ApiServerThread, count: int) -> None:
    """Wait until exactly ``count`` watch streams on ConfigMaps are open."""
    deadline = time.monotonic() + 10
    while api.call(api.emulator.open_watches, "v1/configmaps") != count:
        assert time.monotonic() < deadline, f"expected {count} open watches"
        time.sleep(0.02)


def test_kubectl_watch_and_wait(api: ApiServerThread, kubectl: Any) -> None:
    with kubectl.start("get", "configmaps", "--watch", "-o", "name") as watch:
        try:
            wait_for_watches(api, 1)
            kubectl("create", "configmap", "live", "--from-literal=a=b")
            assert watch.stdout is not None
            assert watch.stdout.readline().strip() == "configmap/live"  # a live ADDED event
        finally:
            watch.terminate()
    wait_for_watches(api, 0)  # the server noticed the client going

    with kubectl.start("wait", "--for=delete", "configmap/live", "--timeout=10s") as wait:
        try:
            wait_for_watches(api, 1)
            kubectl("delete", "configmap", "live")
            assert wait.wait(timeout=10) == 0
        finally:
            if wait.poll() is None:
                wait.kill()


def test_kubectl_validates_as_against_a_real_cluster(
    kubectl: Any, widget_crd: dict[str, Any], make_widget: Any, make_deployment: Any
) -> None:
    """kubectl's default validation works without --validate=false: the server's OpenAPI says it validates
    fields itself (fieldValidation), so kubectl sends Strict and the server refuses unknown fields."""
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(widget_crd))
    kubectl("wait", "--for=condition=established", "crd/widgets.example.dev", "--timeout=5s")
    assert "created" in kubectl("apply", "-f", "-", stdin=yaml.safe_dump(make_widget("w1", size=2))).stdout

    typo = make_widget("w2", size=2)
    typo["spec"]["sise"] = 3
    refused = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(typo), check=False)
    assert refused.returncode == 1
    assert 'strict decoding error: unknown field "spec.sise"' in refused.stderr, refused.stderr
    assert kubectl("get", "widgets", "-o", "name").stdout.split() == ["widget.example.dev/w1"]  # nothing half-made

    # Built-ins too, and an update of an existing object (a three-way strategic merge patch).
    manifest = make_deployment("web", replicas=3)
    assert "created" in kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest)).stdout
    manifest["spec"]["replicas"] = 2
    assert "configured" in kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest)).stdout
    assert kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.replicas}").stdout == "2"

    # `kubectl explain` reads the CRD's schema from the same document.
    explained = kubectl("explain", "widgets.spec.model").stdout
    assert "version" in explained and "<string>" in explained
