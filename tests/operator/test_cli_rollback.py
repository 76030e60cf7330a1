"""`tourniquet rollback --clear` says what will really happen before doing it."""

from __future__ import annotations

from click.testing import CliRunner, Result

from tests.conftest import AD, AI, CM, Cluster, wait_for
from tests.operator.test_agentdeployment import active_revision, agent_doc, wired_revision
from tourniquet import cli


def rollback(cluster: Cluster, kubeconfig: str, *args: str) -> Result:
    """The CLI as on-call runs it: on-call's own credentials, the test's namespace."""
    common = ["--kubeconfig", kubeconfig, "-n", cluster.namespace]
    return CliRunner().invoke(cli.main, ["rollback", "refund-agent", *args, *common])


def observed(cluster: Cluster) -> bool:
    """The operator has acted on the agent's latest spec."""
    agent = cluster.get(AD, "refund-agent") or {}
    return (agent.get("status") or {}).get("observedGeneration") == agent["metadata"].get("generation")


def on_revision_1_by_rollback_with_spec_bundle_at_2(cluster: Cluster, kubeconfig: str) -> None:
    cluster.apply(agent_doc())
    wait_for(lambda: active_revision(cluster) == 1, what="revision 1")
    cluster.apply(agent_doc(prompt="Refund every request."))
    wait_for(lambda: active_revision(cluster) == 2, what="revision 2")
    result = rollback(cluster, kubeconfig, "--to", "1")
    assert result.exit_code == 0, result.output
    assert wired_revision(cluster) == "1"


def test_clearing_a_rollback_onto_a_bad_revision_is_refused_and_says_why(cluster: Cluster, operator, oncall_kubeconfig):
    on_revision_1_by_rollback_with_spec_bundle_at_2(cluster, oncall_kubeconfig)
    cluster.patch(CM, "refund-agent-bundle-2", {"metadata": {"labels": {"tourniquet.dev/verdict": "bad"}}})

    result = rollback(cluster, oncall_kubeconfig, "--clear")
    assert result.exit_code == 1
    assert "spec.bundle is revision 2, which is marked bad" in result.output
    assert "refund-agent would stay on revision 1" in result.output and "nothing was changed" in result.output
    assert "runs spec.bundle again" not in result.output
    assert cluster.get(AD, "refund-agent")["spec"]["rollback"] == {"revision": 1}


def test_clearing_a_rollback_rolls_forward_and_waits_for_it(cluster: Cluster, operator, oncall_kubeconfig):
    on_revision_1_by_rollback_with_spec_bundle_at_2(cluster, oncall_kubeconfig)
    result = rollback(cluster, oncall_kubeconfig, "--clear")
    assert result.exit_code == 0, result.output
    assert "refund-agent runs spec.bundle (revision 2) again" in result.output
    assert wired_revision(cluster) == "2" and "rollback" not in cluster.get(AD, "refund-agent")["spec"]


def test_clearing_a_rollback_while_an_incident_freezes_the_bundle_says_so(
    cluster: Cluster, operator, oncall_kubeconfig
):
    on_revision_1_by_rollback_with_spec_bundle_at_2(cluster, oncall_kubeconfig)
    incident = {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentIncident",
        "metadata": {"name": "bad-tone", "namespace": cluster.namespace},
        "spec": {"agents": ["refund-agent"], "severity": "SEV3", "contain": []},
    }
    cluster.apply([incident])
    wait_for(lambda: cluster.status(AI, "bad-tone").get("phase"), what="the incident seen")

    result = rollback(cluster, oncall_kubeconfig, "--clear")
    assert result.exit_code == 0, result.output
    assert "revision 2 is pinned but not rolled out while incident(s) bad-tone are open" in result.output
    assert "refund-agent keeps running revision 1 for now" in result.output
    wait_for(lambda: observed(cluster), what="the cleared rollback observed")
    assert wired_revision(cluster) == "1"


def test_clearing_a_rollback_while_an_incidents_rollback_is_refused_goes_ahead_and_says_so(
    cluster: Cluster, operator, oncall_kubeconfig
):
    on_revision_1_by_rollback_with_spec_bundle_at_2(cluster, oncall_kubeconfig)
    incident = {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentIncident",
        "metadata": {"name": "dup-refunds", "namespace": cluster.namespace},
        "spec": {"agents": ["refund-agent"], "severity": "SEV2", "rollback": {"to": "lastKnownGood"}},
    }
    cluster.apply([incident])  # nothing is known good yet: its rollback is refused, containment goes on
    wait_for(lambda: cluster.status(AI, "dup-refunds").get("phase") == "Contained", what="Contained")

    result = rollback(cluster, oncall_kubeconfig, "--clear")
    assert result.exit_code == 0, result.output
    assert "refund-agent keeps running revision 1: incident dup-refunds asked for a rollback that is refused" in (
        result.output
    )
    assert "rollback" not in cluster.get(AD, "refund-agent")["spec"]
    wait_for(lambda: observed(cluster), what="the cleared rollback observed")
    assert wired_revision(cluster) == "1", "as it said: the agent keeps revision 1"
