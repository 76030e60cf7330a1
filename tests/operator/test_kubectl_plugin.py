"""`kubectl tourniquet`: the real kubectl finds the plugin the package installs, and on-call sees the
example agent and its open incident."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import BIN, Cluster, example, project_kubectl, wait_for
from tests.operator.test_examples import start
from tests.operator.test_incidents import contained


def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([project_kubectl(), *args], capture_output=True, text=True, timeout=60, env=env)


def test_kubectl_finds_the_plugin() -> None:
    assert (BIN / "kubectl-tourniquet").exists(), "the package installs kubectl-tourniquet next to tourniquet"
    listed = kubectl("plugin", "list")
    assert str(BIN / "kubectl-tourniquet") in listed.stdout, listed.stdout + listed.stderr
    helped = kubectl("tourniquet", "--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("contain", "release", "rollback", "status"):
        assert command in helped.stdout


def test_kubectl_tourniquet_status_shows_the_agent_and_the_open_incident(
    cluster: Cluster, operator, kubeconfig: str
) -> None:
    start(cluster)
    cluster.apply(example("sev1-incident.yaml"))
    wait_for(lambda: contained(cluster, "refund-agent-duplicate-refunds"), what="Contained")

    result = kubectl("tourniquet", "status")  # KUBECONFIG points at the emulator (the kubeconfig fixture)
    assert result.returncode == 0, result.stderr
    agents, _, incidents = result.stdout.partition("\n\n")
    assert agents.splitlines()[0].split() == ["AGENT", "REVISION", "LKG", "READY", "CONTAINED", "DETAIL"]
    row = next(line.split() for line in agents.splitlines() if line.startswith("refund-agent "))
    assert row[:2] == ["refund-agent", "1"] and row[4] == "True"  # revision 1, contained
    incident = next(line for line in incidents.splitlines() if line.startswith("refund-agent-duplicate-refunds"))
    assert incident.split()[1:4] == ["SEV1", "Contained", "refund-agent"]
    assert "revokeTools:Applied" in incident and "drain:Applied" in incident

    one = kubectl("tourniquet", "status", "refund-agent", "-o", "json")
    assert one.returncode == 0, one.stderr
    assert '"name": "refund-agent-duplicate-refunds"' in one.stdout
