"""kubectl against the emulator (skipped where kubectl is absent). Use ``--validate=false``: no /openapi."""

from __future__ import annotations

import json
import time
from typing import Any

import yaml

from tourniquet.sandbox.server import ApiServerThread


def test_kubectl_custom_resources(kubectl: Any, widget_crd: dict[str, Any], make_widget: Any) -> None:
    assert (
        "created" in kubectl("apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump(widget_crd)).stdout
    )
    kubectl("wait", "--for=condition=established", "crd/widgets.example.dev", "--timeout=5s")

    manifest = make_widget("w1", size=2)
    assert "created" in kubectl("apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump(manifest)).stdout
    manifest["spec"]["size"] = 3
    assert (
        "configured" in kubectl("apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump(manifest)).stdout
    )
    assert kubectl("get", "wd", "w1", "-o", "jsonpath={.spec.size}").stdout == "3"

    manifest["spec"]["model"]["version"] = "latest"
    result = kubectl("apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump(manifest), check=False)
    assert result.returncode == 1
    assert (
        'The Widget "w1" is invalid: spec.model.version: Invalid value: "latest": '
        "pin an exact model version; a floating version makes rollback impossible"
    ) in result.stderr

    kubectl("delete", "crd", "widgets.example.dev")
    assert kubectl("get", "widgets", check=False).returncode != 0


def test_kubectl_built_ins(kubectl: Any, make_deployment: Any) -> None:
    kubectl("apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump(make_deployment("web", replicas=3)))
    assert "scaled" in kubectl("scale", "deployment/web", "--replicas=0").stdout
    kubectl("label", "deploy", "web", "team=agents")
    assert kubectl("get", "deploy", "-l", "team=agents", "-o", "name").stdout.split() == [
        "deployment.apps/web"
    ]
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
    kubectl("apply", "--server-side", "--validate=false", "-f", "-", stdin=yaml.safe_dump(server_side))
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
