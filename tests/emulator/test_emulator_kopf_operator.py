"""A real Kopf operator runs a full lifecycle against the emulator, each handler exactly once."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf.testing import KopfRunner

from kubemu.server import ApiServerThread

OPERATOR = textwrap.dedent('''
    """A tiny operator: scales a Deployment to zero when a Widget appears, ticks, cleans up."""
    import json
    import os

    import kopf
    import kubernetes

    CALLS = os.environ['WIDGET_CALLS']


    def record(name, **details):
        with open(CALLS, 'a') as f:
            f.write(json.dumps({'handler': name, **details}) + '\\n')


    def load_config():
        # NB: kubernetes reads KUBECONFIG when imported; load the file named now, not then.
        kubernetes.config.load_kube_config(config_file=os.environ['KUBECONFIG'])
        return kubernetes.client.Configuration.get_default_copy()


    @kopf.on.startup()  # NB: startup handlers run before the login handlers
    def startup(settings, memo, **_):
        settings.posting.enabled = False
        settings.watching.server_timeout = 30
        load_config()
        memo.apps = kubernetes.client.AppsV1Api()  # built once: the first API class costs ~1 s


    @kopf.on.login()
    def login(**_):
        return kopf.ConnectionInfo(server=load_config().host)


    @kopf.on.create('example.dev', 'v1', 'widgets')
    def create_fn(spec, namespace, memo, patch, **_):
        target = spec['target']
        memo.apps.patch_namespaced_deployment_scale(target, namespace, {'spec': {'replicas': 0}})
        record('create_fn', target=target)
        patch.status['phase'] = 'Contained'
        return {'scaledToZero': target}


    @kopf.timer('example.dev', 'v1', 'widgets', interval=0.3, idle=0)
    def tick(status, patch, **_):
        patch.status['ticks'] = (status.get('ticks') or 0) + 1


    @kopf.on.delete('example.dev', 'v1', 'widgets')
    def delete_fn(spec, namespace, memo, **_):
        memo.apps.patch_namespaced_deployment_scale(spec['target'], namespace, {'spec': {'replicas': 2}})
        record('delete_fn', target=spec['target'])
''')


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture()
def operator_module(
    tmp_path: Path, emulator_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, Path]]:
    calls = tmp_path / "calls.jsonl"
    module = tmp_path / "widget_operator.py"
    module.write_text(OPERATOR)
    monkeypatch.setenv("KUBECONFIG", str(emulator_kubeconfig))
    monkeypatch.setenv("WIDGET_CALLS", str(calls))
    # Only this operator's handlers: other tests' operators (Tourniquet's) share Kopf's default registry.
    saved = kopf.get_default_registry()
    kopf.set_default_registry(kopf.OperatorRegistry())
    yield module, calls
    kopf.set_default_registry(saved)


def test_kopf_full_lifecycle_invokes_each_handler_once(
    api: ApiServerThread,
    http: Any,
    widget_crd: dict[str, Any],
    operator_module: tuple[Path, Path],
    make_widget: Any,
    make_deployment: Any,
) -> None:
    module, calls = operator_module
    crd = {**widget_crd}
    # The operator's Widgets name a target Deployment: add the field to the schema.
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    props["target"] = {"type": "string"}
    api.apply_manifests([crd, make_deployment("agent", replicas=3)])

    ns = "/apis/example.dev/v1/namespaces/default/widgets"
    with KopfRunner(["run", "--standalone", "--namespace=default", str(module)], timeout=30) as runner:
        assert http.post(ns, make_widget("w1", target="agent"))[0] == 201

        def contained() -> Any:
            _, obj, _ = http.get(f"{ns}/w1")
            status = obj.get("status") or {}
            return status.get("phase") == "Contained" and (status.get("ticks") or 0) >= 2 and obj

        obj = wait_for(contained, what="the create handler and two timer ticks")
        assert obj["status"]["create_fn"] == {"scaledToZero": "agent"}
        assert obj["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
        _, scale, _ = http.get("/apis/apps/v1/namespaces/default/deployments/agent/scale")
        assert scale["spec"]["replicas"] == 0

        assert http.delete(f"{ns}/w1")[0] == 200
        wait_for(lambda: http.get(f"{ns}/w1")[0] == 404, what="the finalizer to be released")

    assert runner.exception is None
    assert runner.exit_code == 0
    records = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [r["handler"] for r in records] == ["create_fn", "delete_fn"]
    _, dep, _ = http.get("/apis/apps/v1/namespaces/default/deployments/agent")
    assert dep["spec"]["replicas"] == 2
    assert dep["metadata"]["generation"] == 3  # 3 -> 0 -> 2: two spec changes
    assert "Traceback" not in runner.output
    assert " ERROR " not in runner.output and "[ERROR" not in runner.output
