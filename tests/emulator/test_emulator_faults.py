"""Fault injection and request assertions: what tests of operators use the emulator for."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import kmock
import kubernetes
import pytest

from kubemu import RealisticEmulator
from kubemu.server import ApiServerThread

DEPLOYS = "/apis/apps/v1/namespaces/default/deployments"
CMS = "/api/v1/namespaces/default/configmaps"


def test_a_500_once_then_success(
    api: ApiServerThread, kube_client: Any, http: Any, make_deployment: Any
) -> None:
    apps = kubernetes.client.AppsV1Api(kube_client)
    http.post(DEPLOYS, make_deployment("web", replicas=3))
    fault = api.call(
        api.emulator.inject_fault, "patch", "apps/v1/deployments", subresource="scale", status=500
    )

    with pytest.raises(kubernetes.client.ApiException) as e:
        apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 0}})
    assert e.value.status == 500
    assert json.loads(e.value.body)["reason"] == "InternalError"
    assert (
        apps.read_namespaced_deployment("web", "default").spec.replicas == 3
    )  # the failed write changed nothing

    apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 0}})
    assert apps.read_namespaced_deployment("web", "default").spec.replicas == 0
    assert fault.hits == 1 and fault.exhausted


def test_a_fault_on_the_main_endpoint_only_spares_the_subresources(
    api: ApiServerThread, http: Any, make_deployment: Any
) -> None:
    http.post(DEPLOYS, make_deployment("web", replicas=3))
    fault = api.call(api.emulator.inject_fault, "patch", "apps/v1/deployments", subresource="", count=None)

    status, _, _ = http.patch(f"{DEPLOYS}/web/scale", {"spec": {"replicas": 0}})
    assert status == 200
    status, _, _ = http.patch(f"{DEPLOYS}/web", {"metadata": {"labels": {"a": "b"}}})
    assert status == 500
    assert fault.hits == 1


def test_an_injected_conflict_looks_like_a_real_one(
    api: ApiServerThread, http: Any, make_deployment: Any
) -> None:
    http.post(DEPLOYS, make_deployment("web"))
    api.call(api.emulator.inject_fault, "update", "apps/v1/deployments", name="web", status=409)
    _, dep, _ = http.get(f"{DEPLOYS}/web")
    status, body, _ = http.put(f"{DEPLOYS}/web", dep)
    assert status == 409
    assert body["reason"] == "Conflict"
    assert body["message"].startswith(
        'Operation cannot be fulfilled on deployments.apps "web": the object has been modified'
    )
    assert http.put(f"{DEPLOYS}/web", dep)[0] == 200


def test_a_slow_response_still_succeeds(api: ApiServerThread, http: Any) -> None:
    fault = api.call(api.emulator.inject_fault, "create", "configmaps", status=None, delay=0.3)
    started = time.monotonic()
    status, _, _ = http.post(CMS, {"metadata": {"name": "slow"}})
    assert status == 201 and time.monotonic() - started >= 0.3
    assert fault.hits == 1
    assert http.get(f"{CMS}/slow")[0] == 200


def test_faults_can_last_and_be_cancelled(api: ApiServerThread, http: Any) -> None:
    fault = api.call(api.emulator.inject_fault, "get", "v1/configmaps", status=503, count=None)
    assert [http.get(f"{CMS}/any")[0] for _ in range(3)] == [503, 503, 503]
    api.call(fault.cancel)
    assert http.get(f"{CMS}/any")[0] == 404
    assert fault.hits == 3


def test_an_injected_watch_expiry(api: ApiServerThread, http: Any) -> None:
    api.call(api.emulator.inject_fault, "watch", "configmaps", status=410)
    _, events = http.watch(CMS, {"resourceVersion": "1"})
    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]


def test_writes_lists_only_the_writes_since_a_mark(api: ApiServerThread, http: Any) -> None:
    http.post(CMS, {"metadata": {"name": "a"}})
    mark = api.call(lambda: api.emulator.requests_served)
    http.get(f"{CMS}/a")
    http.get(CMS, query={"labelSelector": "app=x"})
    assert api.call(api.emulator.writes, since=mark) == []  # "a converged reconcile issued no write"

    http.patch(f"{CMS}/a", {"data": {"x": "1"}}, query={"fieldManager": "tourniquet"})
    writes = api.call(api.emulator.writes, "v1/configmaps", since=mark)
    assert [(w.method, w.path, w.query) for w in writes] == [
        ("PATCH", f"{CMS}/a", {"fieldManager": "tourniquet"})
    ]
    assert writes[0].body == {"data": {"x": "1"}}
    assert api.call(api.emulator.writes, "apps/v1/deployments", since=mark) == []


emulated = pytest.mark.kmock(cls=RealisticEmulator)


@emulated
async def test_kmock_fixture_and_dsl_reactions(kmock: RealisticEmulator, make_deployment: Any) -> None:
    """The KMock DSL works on top of the emulation: reactions first, assertions on requests & objects."""
    assert (await kmock.post(DEPLOYS, json=make_deployment("web"))).status == 201
    scale_patches = kmock["patch", kmock.resource("apps/v1/deployments"), kmock.subresource("scale")]
    scale_patches[:1] << 500 << {"kind": "Status", "code": 500, "message": "boom"}

    headers = {"Content-Type": "application/merge-patch+json"}
    first = await kmock.patch(f"{DEPLOYS}/web/scale", json={"spec": {"replicas": 0}}, headers=headers)
    second = await kmock.patch(f"{DEPLOYS}/web/scale", json={"spec": {"replicas": 0}}, headers=headers)
    assert (first.status, second.status) == (500, 200)
    assert len(scale_patches) == 2

    stored = kmock.objects["apps/v1/deployments", "default", "web"]
    assert stored["spec"]["replicas"] == 0
    assert [version["spec"]["replicas"] for version in stored.history] == [3, 0]


@emulated
async def test_kmock_objects_seeded_directly_are_served(kmock: RealisticEmulator) -> None:
    kmock.objects["v1/configmaps", "default", "seeded"] = {"data": {"k": "v"}}
    async with kmock.get(f"{CMS}/seeded") as resp:
        body = await resp.json()
    assert body["metadata"]["name"] == "seeded" and body["metadata"]["resourceVersion"]
    async with kmock.get(CMS) as resp:
        assert [i["metadata"]["name"] for i in (await resp.json())["items"]] == ["seeded"]


@emulated
async def test_watch_ends_when_the_server_stops(kmock: RealisticEmulator) -> None:
    url = f"{kmock.url}{CMS}"
    async with aiohttp.ClientSession() as session, session.get(url, params={"watch": "true"}) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        kmock.close_watches()
        assert await resp.read() == b""


def test_inject_fault_rejects_unknown_verbs() -> None:
    with pytest.raises(ValueError, match="unknown verb"):
        RealisticEmulator().inject_fault("frobnicate", "configmaps")


def test_kmock_resource_helpers_are_reexported() -> None:
    assert kmock.resource("apps/v1/deployments").group == "apps"


def test_a_frozen_watch_stays_open_delivers_nothing_then_everything_on_thaw(api: ApiServerThread, http: Any) -> None:
    import threading

    since = str(api.call(lambda: api.emulator.resource_version))
    freeze = api.call(api.emulator.freeze_watches, "v1/configmaps")
    result: dict[str, Any] = {}
    reader = threading.Thread(
        target=lambda: result.update(events=http.watch(CMS, {"resourceVersion": since, "timeoutSeconds": "0.3"})[1])
    )
    reader.start()
    assert http.post(CMS, {"metadata": {"name": "held"}})[0] == 201  # writes still work
    started = time.monotonic()
    http.watch(DEPLOYS, {"resourceVersion": since, "timeoutSeconds": "0.2"})  # other resources are not frozen
    assert time.monotonic() - started < 1
    reader.join(timeout=1.5)
    assert reader.is_alive(), "a frozen stream neither delivers nor ends at timeoutSeconds"
    api.call(freeze.thaw)
    reader.join(timeout=5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in result["events"]] == [("ADDED", "held")]
    # A thawed resource watches normally again.
    _, events = http.watch(CMS, {"resourceVersion": since, "timeoutSeconds": "0.2"})
    assert [e["object"]["metadata"]["name"] for e in events] == ["held"]
