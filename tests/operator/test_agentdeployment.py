"""The real operator against the realistic API server: pinned bundles, wiring, GitOps reverts, rollback."""

from __future__ import annotations

import copy
import json

from click.testing import CliRunner

from tests.conftest import AD, CM, DEPLOY, NP, Cluster, example, wait_for
from tourniquet.cli import main as cli


def agent_doc(prompt: str | None = None, limit: int | None = None) -> list[dict]:
    docs = example()
    agent = docs[1]
    if prompt is not None:
        agent["spec"]["bundle"]["prompt"]["template"] = prompt
    if limit is not None:
        agent["spec"]["revisionHistoryLimit"] = limit
    return docs


def active_revision(cluster: Cluster) -> int | None:
    return (cluster.status(AD, "refund-agent").get("bundle") or {}).get("revision")


def wired_revision(cluster: Cluster) -> str | None:
    worker = cluster.get(DEPLOY, "refund-agent-worker") or {}
    return worker["spec"]["template"]["metadata"].get("annotations", {}).get("tourniquet.dev/bundle-revision")


def bundle_configmaps(cluster: Cluster) -> list[str]:
    cms = cluster.list(CM, label_selector="tourniquet.dev/agent=refund-agent,tourniquet.dev/component=bundle")
    return sorted(cm["metadata"]["name"] for cm in cms)


def test_the_example_agent_is_pinned_at_revision_1_and_wired(cluster: Cluster, operator):
    cluster.apply(example())
    wait_for(lambda: wired_revision(cluster) == "1" and active_revision(cluster) == 1, what="revision 1 wired")

    cm = cluster.get(CM, "refund-agent-bundle-1")
    assert cm["immutable"] is True
    assert cm["metadata"]["labels"]["tourniquet.dev/revision"] == "1"
    assert len(cm["metadata"]["labels"]["tourniquet.dev/bundle-hash"]) == 16
    owner = cm["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("AgentDeployment", "refund-agent")
    assert "issue_refund" in json.loads(cm["data"]["bundle.json"])["tools"][1]["name"]

    worker = cluster.get(DEPLOY, "refund-agent-worker")
    template = worker["spec"]["template"]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["tourniquet-bundle"]["configMap"]["name"] == "refund-agent-bundle-1"
    mounts = template["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "tourniquet-bundle", "mountPath": "/etc/tourniquet/bundle", "readOnly": True} in mounts
    assert worker["spec"]["replicas"] == 2  # wiring touches nothing else

    control = cluster.get(CM, "refund-agent-control")
    assert control["data"] == {"mode": "active", "revokedTools": "[]"}
    policy = cluster.get(NP, "refund-agent-egress")
    cidrs = [peer.get("ipBlock", {}).get("cidr") for rule in policy["spec"]["egress"] for peer in rule.get("to", [])]
    assert {"203.0.113.0/24", "10.20.0.0/16", "10.30.0.0/16"} <= set(cidrs)
    assert policy["spec"]["policyTypes"] == ["Egress"]

    conditions = {c["type"]: c for c in cluster.status(AD, "refund-agent")["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert (conditions["BundlePinned"]["status"], conditions["BundlePinned"]["reason"]) == ("True", "Pinned")


def test_prompt_change_reverts_and_rollback(cluster: Cluster, operator, oncall_kubeconfig):
    cluster.apply(agent_doc())
    wait_for(lambda: wired_revision(cluster) == "1", what="revision 1")

    cluster.apply(agent_doc(prompt="You are the refund assistant, v2."))
    wait_for(lambda: wired_revision(cluster) == "2" and active_revision(cluster) == 2, what="revision 2")

    # A GitOps revert of the prompt reuses revision 1: no revision 3.
    cluster.apply(agent_doc())
    wait_for(lambda: wired_revision(cluster) == "1" and active_revision(cluster) == 1, what="back to 1")
    assert bundle_configmaps(cluster) == ["refund-agent-bundle-1", "refund-agent-bundle-2"]

    # Forward again to 2, then the CLI rolls back to 1.
    cluster.apply(agent_doc(prompt="You are the refund assistant, v2."))
    wait_for(lambda: active_revision(cluster) == 2, what="revision 2 again")
    result = CliRunner().invoke(
        cli, ["rollback", "refund-agent", "--to", "1", "--kubeconfig", oncall_kubeconfig, "-n", cluster.namespace]
    )
    assert result.exit_code == 0, result.output
    assert "runs revision 1" in result.output
    assert wired_revision(cluster) == "1"
    conditions = {c["type"]: c for c in cluster.status(AD, "refund-agent")["conditions"]}
    assert conditions["BundlePinned"]["reason"] == "RolledBack"


def test_rollback_to_a_bad_revision_is_refused(cluster: Cluster, operator, oncall_kubeconfig):
    cluster.apply(agent_doc())
    wait_for(lambda: active_revision(cluster) == 1, what="revision 1")
    cluster.apply(agent_doc(prompt="v2"))
    wait_for(lambda: active_revision(cluster) == 2, what="revision 2")
    cluster.patch(CM, "refund-agent-bundle-1", {"metadata": {"labels": {"tourniquet.dev/verdict": "bad"}}})

    result = CliRunner().invoke(
        cli, ["rollback", "refund-agent", "--to", "1", "--kubeconfig", oncall_kubeconfig, "-n", cluster.namespace]
    )
    assert result.exit_code == 1
    assert "revision 1 is marked bad" in result.output and "not bad: 2" in result.output

    # Committed to Git instead, the operator refuses it the same way and keeps running revision 2.
    cluster.patch(AD, "refund-agent", {"spec": {"rollback": {"revision": 1}}})
    ready = wait_for(
        lambda: next(
            (c for c in cluster.status(AD, "refund-agent")["conditions"] if c["reason"] == "RollbackRefused"), None
        ),
        what="RollbackRefused",
    )
    assert "revision 1 is marked bad" in ready["message"]
    assert wired_revision(cluster) == "2"


def test_history_is_pruned_to_the_limit_but_keeps_the_active(cluster: Cluster, operator):
    for n in range(1, 6):
        cluster.apply(agent_doc(prompt=f"prompt {n}", limit=2))
        wait_for(lambda n=n: active_revision(cluster) == n, what=f"revision {n}")
    wait_for(lambda: bundle_configmaps(cluster) == ["refund-agent-bundle-4", "refund-agent-bundle-5"], what="pruned")
    history = [h["revision"] for h in cluster.status(AD, "refund-agent")["bundle"]["history"]]
    assert history == [4, 5]


def test_a_converged_agent_gets_no_write(cluster: Cluster, operator):
    cluster.apply(example())
    wait_for(lambda: wired_revision(cluster) == "1" and active_revision(cluster) == 1, what="revision 1")
    # Kopf records what it handled after the handler returns: that write belongs to the first pass.
    wait_for(
        lambda: (
            "tourniquet.dev/last-handled-configuration"
            in (cluster.get(AD, "refund-agent")["metadata"].get("annotations") or {})
        ),
        what="Kopf's record of the handled spec",
    )
    mark = cluster.mark()
    import time

    time.sleep(3)  # several resync passes (every second in tests)
    writes = [w for w in cluster.writes(since=mark) if "/events" not in w.path]
    assert writes == []


def not_the_deployment_controllers(deployment: dict) -> dict:
    """The annotations other than the ones a real Deployment controller writes (it numbers the rollout
    deployment.kubernetes.io/revision a moment after the Deployment is created)."""
    annotations = deployment["metadata"].get("annotations") or {}
    return {k: v for k, v in annotations.items() if not k.startswith("deployment.kubernetes.io/")}


def test_a_malformed_agent_is_refused_and_touches_nothing(cluster: Cluster, operator):
    docs = example()
    worker = copy.deepcopy(docs[0])
    cluster.apply([worker])
    worker_before = cluster.get(DEPLOY, "refund-agent-worker")
    floating = copy.deepcopy(docs[1])
    floating["spec"]["bundle"]["model"]["version"] = "latest"
    import pytest

    from kubemu import ApiError

    with pytest.raises(ApiError) as refused:
        cluster.apply([floating])
    assert "pin an exact model version" in str(refused.value)

    missing = copy.deepcopy(docs[1])
    missing["spec"]["consumers"].append({"kind": "Deployment", "name": "no-such-worker"})
    cluster.apply([missing])
    ready = wait_for(
        lambda: next(
            (c for c in cluster.status(AD, "refund-agent").get("conditions", []) if c["type"] == "Ready"), None
        ),
        what="Ready condition",
    )
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert f"consumer Deployment no-such-worker not found in namespace {cluster.namespace}" in ready["message"]
    assert bundle_configmaps(cluster) == []
    assert cluster.get(NP, "refund-agent-egress") is None
    assert cluster.get(CM, "refund-agent-control") is None
    worker_after = cluster.get(DEPLOY, "refund-agent-worker")
    # Untouched by the operator: its spec and metadata (a real cluster's Deployment controller moves status).
    assert worker_after["spec"] == worker_before["spec"]
    assert not_the_deployment_controllers(worker_after) == not_the_deployment_controllers(worker_before)
    assert worker_after["metadata"].get("labels") == worker_before["metadata"].get("labels")
    assert worker_after["metadata"]["generation"] == worker_before["metadata"]["generation"]
