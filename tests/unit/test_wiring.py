"""Wiring touches only what Tourniquet owns on a consumer, and a wired consumer gets no patch."""

from __future__ import annotations

import copy

from tourniquet.domain import wiring


def deployment() -> dict:
    return {
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": {"annotations": {"team": "support"}},
                "spec": {
                    "volumes": [{"name": "cache", "emptyDir": {}}],
                    "containers": [
                        {"name": "worker", "image": "w:1", "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]},
                        {"name": "sidecar", "image": "s:1"},
                    ],
                },
            },
        }
    }


def apply_strategic(obj: dict, patch: dict) -> dict:
    """Just enough strategic merge for these tests: lists of named things merge by key."""
    out = copy.deepcopy(obj)

    def merge(dst, src, key=None):
        for k, v in src.items():
            if isinstance(v, dict):
                dst[k] = merge(dst.get(k) or {}, v)
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                mk = "mountPath" if k == "volumeMounts" else "name"  # env, volumes, containers: by name
                existing = dst.get(k) or []
                for item in v:
                    idx = next((i for i, e in enumerate(existing) if e.get(mk) == item.get(mk)), None)
                    if item.get("$patch") == "delete":
                        if idx is not None:
                            existing.pop(idx)
                    elif idx is None:
                        existing.append(copy.deepcopy(item))
                    else:
                        merge(existing[idx], item)
                dst[k] = existing
            elif v is None:
                dst.pop(k, None)
            else:
                dst[k] = v
        return dst

    return merge(out, patch)


def test_wiring_names_the_revision_and_mounts_the_bundle_in_every_container():
    patch = wiring.plan_wiring_patch(
        deployment(),
        agent="refund-agent",
        revision=2,
        bundle_cm="refund-agent-bundle-2",
        control_cm="refund-agent-control",
    )
    wired = apply_strategic(deployment(), patch)
    template = wired["spec"]["template"]
    assert wiring.wired_revision(wired) == 2
    assert template["metadata"]["annotations"]["team"] == "support"
    assert [v["name"] for v in template["spec"]["volumes"]] == ["cache", "tourniquet-bundle", "tourniquet-control"]
    for container in template["spec"]["containers"]:
        assert wiring.BUNDLE_MOUNT in [m["mountPath"] for m in container["volumeMounts"]]
        assert {"name": "TOURNIQUET_AGENT", "value": "refund-agent"} in container["env"]
    assert wired["spec"]["replicas"] == 2
    assert "replicas" not in patch["spec"]


def test_a_wired_consumer_needs_no_patch_and_a_new_revision_does():
    args = {"agent": "a", "bundle_cm": "a-bundle-1", "control_cm": "a-control"}
    wired = apply_strategic(deployment(), wiring.plan_wiring_patch(deployment(), revision=1, **args))
    assert wiring.plan_wiring_patch(wired, revision=1, **args) is None
    args2 = {**args, "bundle_cm": "a-bundle-2"}
    rewired = apply_strategic(wired, wiring.plan_wiring_patch(wired, revision=2, **args2))
    assert wiring.wired_revision(rewired) == 2
    volume = next(v for v in rewired["spec"]["template"]["spec"]["volumes"] if v["name"] == "tourniquet-bundle")
    assert volume["configMap"]["name"] == "a-bundle-2"


def test_unwiring_restores_the_users_template():
    original = deployment()
    wired = apply_strategic(
        original, wiring.plan_wiring_patch(original, agent="a", revision=1, bundle_cm="b", control_cm="c")
    )
    unwired = apply_strategic(wired, wiring.plan_unwiring_patch(wired))
    before, after = original["spec"]["template"], unwired["spec"]["template"]
    assert after["metadata"] == before["metadata"]
    assert after["spec"]["volumes"] == before["spec"]["volumes"]
    for old, new in zip(before["spec"]["containers"], after["spec"]["containers"], strict=True):
        ours = ("volumeMounts", "env")
        for key in ours:
            assert (new.get(key) or []) == (old.get(key) or [])
        assert {k: v for k, v in new.items() if k not in ours} == {k: v for k, v in old.items() if k not in ours}
    assert wiring.plan_unwiring_patch(unwired) is None


def test_a_wired_consumer_names_its_agent_and_an_agent_names_its_consumers():
    consumer = deployment()
    assert wiring.wired_agent(consumer) is None
    patch = wiring.plan_wiring_patch(
        consumer, agent="refund-agent", revision=1, bundle_cm="refund-agent-bundle-1", control_cm="refund-agent-control"
    )
    assert patch is not None
    assert wiring.wired_agent(apply_strategic(consumer, patch)) == "refund-agent"

    agent = {"spec": {"consumers": [{"name": "worker"}, {"kind": "StatefulSet", "name": "indexer"}]}}
    assert wiring.names_consumer(agent, "Deployment", "worker")  # kind defaults to Deployment
    assert wiring.names_consumer(agent, "StatefulSet", "indexer")
    assert not wiring.names_consumer(agent, "StatefulSet", "worker")
    assert not wiring.names_consumer({"spec": {}}, "Deployment", "worker")
