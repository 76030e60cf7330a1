"""`tourniquet contain` as a tired on-call engineer types it: the CRD's spellings, typos refused before anything
is created, and one incident per call, however fast the calls come."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from click.testing import CliRunner, Result

from tests.conftest import AI, Cluster, example
from tourniquet import cli, cli_incidents


def contain(cluster: Cluster, kubeconfig: str, *args: str) -> Result:
    """The CLI as on-call runs it: on-call's own credentials, the test's namespace."""
    common = ["--no-wait", "--kubeconfig", kubeconfig, "-n", cluster.namespace]
    return CliRunner().invoke(cli.main, ["contain", *args, *common])


def incidents(cluster: Cluster) -> list[dict]:
    return cluster.list(AI)


@pytest.mark.parametrize("spelling", ["1", "SEV1", "sev1", "Sev1"])
def test_contain_takes_the_severity_as_the_crd_spells_it_too(
    cluster: Cluster, oncall_kubeconfig: str, spelling: str
) -> None:
    cluster.apply(example())
    result = contain(cluster, oncall_kubeconfig, "refund-agent", "--sev", spelling)
    assert result.exit_code == 0, result.output
    (incident,) = incidents(cluster)
    assert incident["spec"]["severity"] == "SEV1"


def test_an_unknown_severity_is_refused_with_the_spellings(cluster: Cluster, oncall_kubeconfig: str) -> None:
    cluster.apply(example())
    result = contain(cluster, oncall_kubeconfig, "refund-agent", "--sev", "SEV4")
    assert result.exit_code == 2
    assert "1, 2 or 3 (also SEV1, sev1, …)" in result.output
    assert incidents(cluster) == []


def test_two_contains_in_the_same_second_open_two_incidents(
    cluster: Cluster, oncall_kubeconfig: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.apply(example())
    monkeypatch.setattr(cli_incidents, "_now", lambda: datetime(2026, 11, 21, 3, 12, 7, tzinfo=UTC))
    first = contain(cluster, oncall_kubeconfig, "refund-agent", "--sev", "1")
    second = contain(cluster, oncall_kubeconfig, "refund-agent", "--sev", "2", "--levers", "shadow")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    names = sorted(i["metadata"]["name"] for i in incidents(cluster))
    assert len(names) == 2 and names[0] != names[1]
    assert all(n.startswith("refund-agent-oncall-20261121t031207-") for n in names), names
    for name in names:  # each call prints the name it got, for `release`
        assert f"Opened AgentIncident {name} " in first.output + second.output


def test_contain_refuses_a_missing_agent_and_creates_nothing(cluster: Cluster, oncall_kubeconfig: str) -> None:
    cluster.apply(example())
    result = contain(cluster, oncall_kubeconfig, "refund-agnet", "--sev", "1")
    assert result.exit_code == 1
    assert f"AgentDeployment refund-agnet not found in namespace {cluster.namespace}" in result.output
    assert "did you mean refund-agent?" in result.output and "nothing was created" in result.output
    assert incidents(cluster) == [], "no Invalid incident left behind"

    # One typo among several agents: still nothing, and the message names only the missing one.
    result = contain(cluster, oncall_kubeconfig, "refund-agent", "notify-agnet", "--sev", "1")
    assert result.exit_code == 1
    assert "AgentDeployment notify-agnet not found" in result.output and "refund-agent not found" not in result.output
    assert incidents(cluster) == []


def test_contain_refuses_what_the_operator_would_refuse_before_creating_it(
    cluster: Cluster, oncall_kubeconfig: str
) -> None:
    cluster.apply(example())
    result = contain(cluster, oncall_kubeconfig, "refund-agent", "--sev", "1", "--tools", "issue_refunds")
    assert result.exit_code == 1
    assert "agent refund-agent has no tool 'issue_refunds' to revoke" in result.output
    assert incidents(cluster) == []


def test_an_explicit_name_that_exists_says_what_to_do(cluster: Cluster, oncall_kubeconfig: str) -> None:
    cluster.apply(example())
    assert contain(cluster, oncall_kubeconfig, "refund-agent", "--sev", "1", "--name", "dup-refunds").exit_code == 0
    again = contain(cluster, oncall_kubeconfig, "refund-agent", "--sev", "1", "--name", "dup-refunds")
    assert again.exit_code == 1
    assert f"AgentIncident dup-refunds already exists in namespace {cluster.namespace}" in again.output
    assert "--name" in again.output
