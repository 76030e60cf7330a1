"""Lists and watches: selectors, pagination, resumption, expiry, timeouts, as a client sees them."""

from __future__ import annotations

import threading
import time
from typing import Any

import kubernetes
import pytest

from kubemu.server import ApiServerThread

CMS = "/api/v1/namespaces/default/configmaps"


@pytest.fixture()
def labelled(http: Any) -> None:
    for name, labels in [
        ("a", {"app": "x", "tier": "web"}),
        ("b", {"app": "y", "tier": "web"}),
        ("c", {"app": "z"}),
        ("d", {}),
    ]:
        assert http.post(CMS, {"metadata": {"name": name, "labels": labels}})[0] == 201


def names(body: dict[str, Any]) -> list[str]:
    return [item["metadata"]["name"] for item in body["items"]]


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("app=x", ["a"]),
        ("app==x", ["a"]),
        ("app!=x", ["b", "c", "d"]),
        ("app in (x, y)", ["a", "b"]),
        ("app notin (x,y)", ["c", "d"]),
        ("tier", ["a", "b"]),
        ("!tier", ["c", "d"]),
        ("tier=web,app!=y", ["a"]),
    ],
)
def test_label_selectors(http: Any, labelled: None, selector: str, expected: list[str]) -> None:
    status, body, _ = http.get(CMS, query={"labelSelector": selector})
    assert status == 200
    assert names(body) == expected


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("metadata.name=b", ["b"]),
        ("metadata.name==b", ["b"]),
        ("metadata.name!=b", ["a", "c", "d"]),
        ("metadata.namespace=default,metadata.name!=a", ["b", "c", "d"]),
    ],
)
def test_field_selectors(http: Any, labelled: None, selector: str, expected: list[str]) -> None:
    status, body, _ = http.get(CMS, query={"fieldSelector": selector})
    assert status == 200
    assert names(body) == expected


def test_bad_selectors_are_400(http: Any) -> None:
    assert http.get(CMS, query={"labelSelector": "app in x"})[0] == 400
    status, body, _ = http.get(CMS, query={"fieldSelector": "data.k=v"})
    assert status == 400 and body["message"] == "field label not supported: data.k"


def test_list_carries_the_current_resource_version(http: Any, labelled: None) -> None:
    _, body, _ = http.get(CMS)
    assert body["kind"] == "ConfigMapList" and body["apiVersion"] == "v1"
    _, last, _ = http.get(f"{CMS}/d")
    assert body["metadata"]["resourceVersion"] == last["metadata"]["resourceVersion"]


def test_cluster_wide_and_namespaced_lists(http: Any) -> None:
    http.post("/api/v1/namespaces", {"metadata": {"name": "other"}})
    http.post(CMS, {"metadata": {"name": "here"}})
    http.post("/api/v1/namespaces/other/configmaps", {"metadata": {"name": "there"}})
    assert names(http.get(CMS)[1]) == ["here"]
    assert names(http.get("/api/v1/configmaps")[1]) == ["here", "there"]
    assert names(http.get("/api/v1/configmaps", query={"fieldSelector": "metadata.namespace=other"})[1]) == [
        "there"
    ]


def test_lists_are_in_namespace_then_name_order_through_deletes_and_recreates(http: Any) -> None:
    for ns in ("zeta", "alpha"):
        http.post("/api/v1/namespaces", {"metadata": {"name": ns}})
    for ns, name in [("zeta", "m"), ("alpha", "q"), ("zeta", "b"), ("alpha", "a"), ("zeta", "z")]:
        http.post(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": name}})
    assert http.delete("/api/v1/namespaces/zeta/configmaps/m")[0] == 200
    http.post("/api/v1/namespaces/alpha/configmaps", {"metadata": {"name": "m"}})
    http.post("/api/v1/namespaces/zeta/configmaps", {"metadata": {"name": "m"}})
    everywhere = http.get("/api/v1/configmaps")[1]["items"]
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everywhere] == [
        ("alpha", "a"),
        ("alpha", "m"),
        ("alpha", "q"),
        ("zeta", "b"),
        ("zeta", "m"),
        ("zeta", "z"),
    ]
    assert names(http.get("/api/v1/namespaces/zeta/configmaps")[1]) == ["b", "m", "z"]
    http.delete("/api/v1/namespaces/alpha/configmaps/a")
    http.delete("/api/v1/namespaces/alpha/configmaps/m")
    http.delete("/api/v1/namespaces/alpha/configmaps/q")
    assert names(http.get("/api/v1/namespaces/alpha/configmaps")[1]) == []


def test_pagination_with_limit_and_continue(http: Any) -> None:
    for i in range(5):
        http.post(CMS, {"metadata": {"name": f"cm{i}"}})
    _, page1, _ = http.get(CMS, query={"limit": "2"})
    assert names(page1) == ["cm0", "cm1"]
    assert page1["metadata"]["remainingItemCount"] == 3
    _, page2, _ = http.get(CMS, query={"limit": "2", "continue": page1["metadata"]["continue"]})
    _, page3, _ = http.get(CMS, query={"limit": "2", "continue": page2["metadata"]["continue"]})
    assert names(page2) == ["cm2", "cm3"] and names(page3) == ["cm4"]
    assert "continue" not in page3["metadata"]


def test_watch_from_nothing_lists_then_closes_on_timeout(http: Any, labelled: None) -> None:
    started = time.monotonic()
    content_type, events = http.watch(CMS, {"timeoutSeconds": "1"})
    assert 1.0 <= time.monotonic() - started < 3.0  # the server closed the stream, not the client
    assert content_type.startswith("application/json")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("ADDED", "c"),
        ("ADDED", "d"),
    ]


def test_watch_resumes_without_replaying(http: Any, labelled: None) -> None:
    _, listing, _ = http.get(CMS)
    since = listing["metadata"]["resourceVersion"]
    http.patch(f"{CMS}/b", {"data": {"x": "1"}})
    http.post(CMS, {"metadata": {"name": "e"}})
    http.delete(f"{CMS}/a")
    _, events = http.watch(CMS, {"resourceVersion": since, "timeoutSeconds": "0.3"})
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "b"),
        ("ADDED", "e"),
        ("DELETED", "a"),
    ]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] > int(since)


def test_watch_with_a_selector_sees_objects_leave_and_enter(http: Any, labelled: None) -> None:
    since = http.get(CMS)[1]["metadata"]["resourceVersion"]
    http.patch(f"{CMS}/a", {"metadata": {"labels": {"app": "moved"}}})
    http.patch(f"{CMS}/c", {"metadata": {"labels": {"app": "x"}}})
    http.patch(f"{CMS}/b", {"data": {"unrelated": "yes"}})
    _, events = http.watch(CMS, {"resourceVersion": since, "labelSelector": "app=x", "timeoutSeconds": "0.3"})
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("DELETED", "a"),
        ("ADDED", "c"),
    ]


def test_too_old_resource_version_is_410_once_history_wrapped(make_http: Any) -> None:
    with ApiServerThread(watch_history_limit=5) as api:
        http = make_http(api.url)
        first = http.post(CMS, {"metadata": {"name": "first"}})[1]["metadata"]["resourceVersion"]
        _, events = http.watch(CMS, {"resourceVersion": first, "timeoutSeconds": "0.2"})
        assert events == []  # nothing newer yet, and the history still covers it
        for i in range(6):
            http.post(CMS, {"metadata": {"name": f"cm{i}"}})
        _, events = http.watch(CMS, {"resourceVersion": first, "timeoutSeconds": "0.2"})
        assert len(events) == 1 and events[0]["type"] == "ERROR"
        assert events[0]["object"]["code"] == 410
        assert events[0]["object"]["reason"] == "Expired"
        assert events[0]["object"]["message"].startswith(f"too old resource version: {first} (")


def test_initial_events_end_with_a_bookmark(http: Any, labelled: None) -> None:
    _, events = http.watch(
        CMS,
        {
            "sendInitialEvents": "true",
            "resourceVersionMatch": "NotOlderThan",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "0.2",
        },
    )
    assert [e["type"] for e in events] == ["ADDED"] * 4 + ["BOOKMARK"]
    assert events[-1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_live_events_reach_a_kubernetes_client_watch(
    api: ApiServerThread, kube_client: Any, http: Any
) -> None:
    core = kubernetes.client.CoreV1Api(kube_client)
    seen: list[tuple[str, str]] = []

    def consume() -> None:
        stream = kubernetes.watch.Watch().stream(
            core.list_namespaced_config_map, "default", timeout_seconds=2, _preload_content=False
        )
        for event in stream:
            seen.append((event["type"], event["raw_object"]["metadata"]["name"]))
            if len(seen) == 3:
                break

    thread = threading.Thread(target=consume)
    thread.start()
    deadline = time.monotonic() + 10
    while not api.call(api.emulator.open_watches, "v1/configmaps") and time.monotonic() < deadline:
        time.sleep(0.02)
    # NB: no metadata.namespace in the body: the object still reaches the namespaced watch.
    http.post(CMS, {"metadata": {"name": "live"}})
    http.patch(f"{CMS}/live", {"data": {"x": "1"}})
    http.delete(f"{CMS}/live")
    thread.join(timeout=5)
    assert seen == [("ADDED", "live"), ("MODIFIED", "live"), ("DELETED", "live")]
