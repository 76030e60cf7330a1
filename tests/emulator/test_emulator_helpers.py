"""The emulator's pure helpers: selectors, patches, paths, protobuf bodies."""

from __future__ import annotations

from typing import Any

import pytest

from kubemu import ApiError, LabelSelector, json_patch, merge_patch, strategic_merge_patch
from kubemu.protobuf import decode_protobuf
from kubemu.resources import parse_api_path


@pytest.mark.parametrize(
    "text, labels, matches",
    [
        ("", {}, True),
        ("a=1", {"a": "1"}, True),
        ("a=1", {"a": "2"}, False),
        ("a!=1", {}, True),
        ("a in (1, 2),b", {"a": "2", "b": ""}, True),
        ("a notin (1,2)", {"a": "3"}, True),
        ("a notin (1,2)", {"a": "1"}, False),
        ("!a", {"b": "1"}, True),
        ("x.io/a=b", {"x.io/a": "b"}, True),
        ("n>5", {"n": "7"}, True),
        ("n<5", {"n": "7"}, False),
    ],
)
def test_label_selector_matching(text: str, labels: dict[str, str], matches: bool) -> None:
    assert LabelSelector.parse(text).matches(labels) is matches


@pytest.mark.parametrize("text", ["a in b", "a=(", "=x", "n>five"])
def test_label_selector_syntax_errors(text: str) -> None:
    with pytest.raises(ValueError, match="unable to parse requirement"):
        LabelSelector.parse(text)


def test_structured_selector_renders_as_a_string() -> None:
    selector = LabelSelector.from_structured(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["b", "a"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        }
    )
    assert str(selector) == "app=web,tier in (a,b),!canary"
    assert selector.matches({"app": "web", "tier": "a"}) and not selector.matches({"app": "web", "tier": "c"})


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "l": [3], "n": {"x": None}}
    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}, "l": [3], "n": {}}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}


def test_json_patch_failures_are_422() -> None:
    assert json_patch({"a": 1}, [{"op": "replace", "path": "/a", "value": 2}]) == {"a": 2}
    with pytest.raises(ApiError) as e:
        json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 5}])
    assert e.value.code == 422
    with pytest.raises(ApiError) as e:
        json_patch({"a": 1}, [{"op": "remove", "path": "/missing"}])
    assert e.value.code == 422


@pytest.mark.parametrize(
    "target, patch, expected",
    [
        (
            {"containers": [{"name": "a", "image": "1"}]},
            {"containers": [{"name": "b", "image": "2"}]},
            {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]},
        ),
        (
            {"containers": [{"name": "a", "image": "1", "env": [{"name": "X", "value": "1"}]}]},
            {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}]},
            {
                "containers": [
                    {
                        "name": "a",
                        "image": "1",
                        "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
                    }
                ]
            },
        ),
        (
            {"volumeMounts": [{"mountPath": "/a", "name": "v"}]},
            {"volumeMounts": [{"mountPath": "/a", "$patch": "delete"}]},
            {"volumeMounts": []},
        ),
        (
            {"ports": [{"containerPort": 80, "name": "http"}]},
            {"ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"ports": [{"containerPort": 80, "name": "http", "protocol": "TCP"}]},
        ),
        (
            {"conditions": [{"type": "Ready", "status": "False"}]},
            {"conditions": [{"type": "Ready", "status": "True"}]},
            {"conditions": [{"type": "Ready", "status": "True"}]},
        ),
        ({"finalizers": ["a"]}, {"finalizers": ["b", "a"]}, {"finalizers": ["a", "b"]}),
        ({"finalizers": ["a", "b"]}, {"$deleteFromPrimitiveList/finalizers": ["a"]}, {"finalizers": ["b"]}),
        ({"ingress": [{"from": [1]}]}, {"ingress": []}, {"ingress": []}),  # no merge key: replaced
        ({"m": {"a": 1, "b": 2}}, {"m": {"$patch": "replace", "c": 3}}, {"m": {"c": 3}}),
        ({"m": {"a": 1}, "k": 1}, {"m": {"$patch": "delete"}}, {"k": 1}),
        ({"s": {"type": "A", "a": {}}}, {"s": {"$retainKeys": ["type"], "type": "B"}}, {"s": {"type": "B"}}),
        (
            {"containers": [{"name": "a"}]},
            {"$setElementOrder/containers": [{"name": "a"}], "x": None},
            {"containers": [{"name": "a"}]},
        ),
    ],
)
def test_strategic_merge_patch(
    target: dict[str, Any], patch: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert strategic_merge_patch(target, patch) == expected


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/api/v1/namespaces", ("", "v1", "namespaces", None, None, None)),
        ("/api/v1/namespaces/default", ("", "v1", "namespaces", None, "default", None)),
        ("/api/v1/namespaces/default/status", ("", "v1", "namespaces", None, "default", "status")),
        ("/api/v1/namespaces/default/configmaps", ("", "v1", "configmaps", "default", None, None)),
        ("/api/v1/configmaps", ("", "v1", "configmaps", None, None, None)),
        (
            "/apis/apps/v1/namespaces/ns/deployments/web/scale",
            ("apps", "v1", "deployments", "ns", "web", "scale"),
        ),
        (
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.y",
            ("apiextensions.k8s.io", "v1", "customresourcedefinitions", None, "x.y", None),
        ),
        ("/version", (None, None, None, None, None, None)),
    ],
)
def test_parse_api_path(path: str, expected: tuple[str | None, ...]) -> None:
    parsed = parse_api_path(path)
    assert (
        parsed.group,
        parsed.version,
        parsed.plural,
        parsed.namespace,
        parsed.name,
        parsed.subresource,
    ) == expected


def test_decode_protobuf_configmap() -> None:
    # As sent by `kubectl create configmap live --from-literal=a=b` (kubectl 1.32).
    body = (
        b'k8s\x00\n\x0f\n\x02v1\x12\tConfigMap\x12\x1e\n\x14\n\x04live\x12\x00\x1a\x00"\x00*\x002\x008\x00B'
        b'\x00\x12\x06\n\x01a\x12\x01b\x1a\x00"\x00'
    )
    assert decode_protobuf(body) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "live"},
        "data": {"a": "b"},
    }
