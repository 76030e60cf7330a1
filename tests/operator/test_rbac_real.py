"""RBAC proven on the real API server, both ways.

The operator runs as the chart's ServiceAccount with exactly the roles Helm renders, and on-call runs the CLI as
a person in the group the chart's on-call ClusterRole is bound to. One lifecycle touches everything the product
does — pin, wire two kinds of consumer, promote, prune, the canary, contain from the CLI (revoke, evidence,
drain with a KEDA ScaledObject, rollback, Events), release, roll back from the CLI, an Alertmanager alert,
delete — and:

* with the roles as shipped it finishes and the API server refused nothing (its audit log says so);
* with any single grant removed, it does not: a request is refused (403 in the audit log) or a step never
  happens. So no grant in the chart is unused.

The audit log is checked after every step, so a refusal ends the run at once.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import (
    AD,
    AI,
    CM,
    DEPLOY,
    LEDGER_SECRET,
    OperatorProcess,
    chart_install,
    chart_rbac,
    example,
    free_port,
    operator_scope,
)
from tests.operator.agentruntime import agent_runtime
from tests.operator.evaljobs import cases_given, evaluation_jobs, finish_job, report
from tests.operator.test_cli_undo import refund
from tests.operator.test_gate import EVALUATION
from tests.operator.test_incidents import KEDA_CRD
from tests.realcluster import ONCALL_GROUP, RealCluster, operator_account
from tourniquet.cli import main as cli
from tourniquet.domain.compensation_job import compensation_job_name
from tourniquet.runtime import open_ledger

pytestmark = pytest.mark.real

STS = "apps/v1/statefulsets"
JOBS = "batch/v1/jobs"
SCALEDOBJECTS = "keda.sh/v1alpha1/scaledobjects"
ARC = "tourniquet.dev/v1alpha1/agentregressioncases"
TOKEN = "rbac-test-token"


# -- the grants ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """One permission of one rendered role: a verb on a resource (or subresource) of a group."""

    role: str  # "Role" or "ClusterRole", and whose: the operator's or on-call's
    owner: str
    group: str
    resource: str
    verb: str
    names: tuple[str, ...] = ()  # resourceNames (the ledger Secrets)

    def __str__(self) -> str:
        named = f"[{','.join(self.names)}]" if self.names else ""
        return f"{self.owner}-{self.role}:{self.verb}:{self.group or 'core'}/{self.resource}{named}"


def _roles(rendered: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in rendered:
        if doc["kind"] in ("Role", "ClusterRole"):
            owner = "oncall" if doc["metadata"]["name"].endswith("-oncall") else "operator"
            yield owner, doc


def grants_of(rendered: list[dict[str, Any]]) -> list[Grant]:
    found = []
    for owner, role in _roles(rendered):
        for rule in role["rules"]:
            assert not rule.get("nonResourceURLs"), rule  # none in the chart
            # Only the ledger Secrets are granted by name.
            assert not rule.get("resourceNames") or rule["resources"] == ["secrets"], rule
            names = tuple(rule.get("resourceNames") or ())
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    found += [Grant(role["kind"], owner, group, resource, verb, names) for verb in rule["verbs"]]
    return found


def without(rendered: list[dict[str, Any]], grant: Grant) -> list[dict[str, Any]]:
    """The chart's RBAC with one grant taken out (each rule rewritten as single grants)."""
    docs = copy.deepcopy(chart_rbac(rendered))
    for doc in docs:
        owner = "oncall" if doc["metadata"]["name"].endswith("-oncall") else "operator"
        if doc["kind"] != grant.role or owner != grant.owner:
            continue
        singles = [
            {"apiGroups": [g], "resources": [r], "verbs": [v], **named(rule)}
            for rule in doc["rules"]
            for g in rule["apiGroups"]
            for r in rule["resources"]
            for v in rule["verbs"]
        ]
        doc["rules"] = [
            s for s in singles if (s["apiGroups"][0], s["resources"][0], s["verbs"][0]) != grant_key(grant)
        ]
    return docs


def named(rule: dict[str, Any]) -> dict[str, Any]:
    return {"resourceNames": list(rule["resourceNames"])} if rule.get("resourceNames") else {}


def grant_key(grant: Grant) -> tuple[str, str, str]:
    return grant.group, grant.resource, grant.verb


# The grants are the same whatever namespace the chart is rendered for.
GRANTS = grants_of(chart_install("rbac-proof"))

# Redundant: the ClusterRole's list of AgentDeployments in every namespace (the receiver's lookup of an alert
# without a namespace label, by an operator started as `kopf run`, which is not told its namespaces) covers the
# Role's list in the namespace (Kopf's watch). Strict: the day the Role's grant is needed alone, this fails.
REDUNDANT = {"operator-Role:list:tourniquet.dev/agentdeployments"}


def _grant_params() -> list[Any]:
    redundant = pytest.mark.xfail(strict=True, reason="redundant grant, see REDUNDANT")
    return [pytest.param(g, id=str(g), marks=[redundant] if str(g) in REDUNDANT else []) for g in GRANTS]


# -- the lifecycle ---------------------------------------------------------------------------------------------


class Refused(AssertionError):
    """The API server refused a request of the operator's or on-call's."""


@dataclass
class Lifecycle:
    cluster: RealCluster
    oncall: str  # on-call's kubeconfig
    http_port: int
    ledger: str  # the agent's ledger (a SQLite file), named by its Secret
    workdir: Path
    since: int = 0

    def refusals(self) -> list[str]:
        return [f"{c.user}: {c.method} {c.path}" for c in self.cluster.calls(self.since) if c.code == 403]

    def check(self) -> None:
        refused = self.refusals()
        if refused:
            raise Refused("refused: " + "; ".join(sorted(set(refused))))

    def wait(self, fn: Callable[[], Any], what: str, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            value = fn()
            if value:
                return value
            time.sleep(0.1)
        self.check()
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def cli(self, *args: str) -> str:
        result = CliRunner().invoke(cli, [*args, "--kubeconfig", self.oncall, "-n", self.cluster.namespace])
        self.check()
        assert result.exit_code == 0, f"tourniquet {' '.join(args)}: {result.output}"
        return result.output

    def alert(self, labels: dict[str, str]) -> None:
        body = {"version": "4", "status": "firing", "alerts": [{"status": "firing", "labels": labels}]}
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/alertmanager",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200, response.read()
        except urllib.error.HTTPError as error:
            raise AssertionError(f"the receiver answered {error.code}: {error.read().decode()}") from None
        self.check()

    # -- reading --

    def condition(self, resource: str, name: str, kind: str) -> dict[str, Any]:
        conditions = self.cluster.status(resource, name).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), {})

    def replicas(self, resource: str, name: str) -> int:
        return int(self.cluster.get(resource, name)["spec"]["replicas"])

    def wired(self, resource: str, name: str) -> str | None:
        template = (self.cluster.get(resource, name) or {}).get("spec", {}).get("template", {})
        return (template.get("metadata", {}).get("annotations") or {}).get("tourniquet.dev/bundle-revision")

    def verdict(self, revision: int) -> str | None:
        cm = self.cluster.get(CM, f"refund-agent-bundle-{revision}") or {}
        return (cm.get("metadata", {}).get("labels") or {}).get("tourniquet.dev/verdict")

    # -- the steps --

    def run(self) -> None:
        cluster = self.cluster
        worker, agent = example()
        ledger = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "refund-ledger", "labels": {"app": "refund-agent"}},
            "spec": {
                "replicas": 1,
                "serviceName": "refund-ledger",
                "selector": {"matchLabels": {"app": "refund-agent", "part": "ledger"}},
                "template": {
                    "metadata": {"labels": {"app": "refund-agent", "part": "ledger"}},
                    "spec": {"containers": [{"name": "ledger", "image": "ghcr.io/example/refund-ledger:1"}]},
                },
            },
        }
        queue = {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": "refund-queue"},
            "spec": {"scaleTargetRef": {"name": "refund-agent-worker"}, "minReplicaCount": 1},
        }
        agent["spec"]["consumers"].append({"kind": "StatefulSet", "name": "refund-ledger"})
        agent["spec"]["revisionHistoryLimit"] = 1
        agent["spec"]["promotion"] = {"soakSeconds": 0}
        agent["spec"]["ledger"] = {"secretRef": {"name": LEDGER_SECRET}}
        agent["spec"]["compensation"] = {"modules": ["refund_agent.compensators"]}
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": LEDGER_SECRET},
                  "stringData": {"url": self.ledger}}
        cluster.apply([worker, ledger, queue, secret, agent])

        # Pinned and wired into both kinds of consumer; promoted on evidence (no incident for 0 s).
        self.wait(lambda: self.wired(DEPLOY, "refund-agent-worker") == "1", "the Deployment wired")
        self.wait(lambda: self.wired(STS, "refund-ledger") == "1", "the StatefulSet wired")
        self.wait(lambda: self.verdict(1) == "good", "revision 1 known good")
        # Revision 2 runs and is promoted too; revision 3 runs unproven; history beyond the limit is pruned.
        agent["spec"]["bundle"]["prompt"]["template"] = "You are the refund assistant, v2."
        cluster.apply([agent])
        self.wait(lambda: self.wired(DEPLOY, "refund-agent-worker") == "2", "revision 2 wired")
        self.wait(lambda: self.verdict(2) == "good", "revision 2 known good")
        agent["spec"]["bundle"]["prompt"]["template"] = "You are the refund assistant, v3."
        agent["spec"]["promotion"] = {"soakSeconds": 3600}
        cluster.apply([agent])
        self.wait(lambda: self.wired(DEPLOY, "refund-agent-worker") == "3", "revision 3 wired")
        self.wait(lambda: cluster.get(CM, "refund-agent-bundle-1") is None, "revision 1 pruned")
        # The watch canary in this namespace.
        self.wait(lambda: (cluster.get(AI, "tourniquet-canary") or {}).get("metadata", {}).get("annotations"), "canary")

        # On-call contains: revoke, evidence, drain (and the ScaledObject paused); the SEV1 playbook rolls back.
        self.cli("contain", "refund-agent", "--sev", "SEV1", "--levers", "revokeTools,drain", "--name", "sev1")
        self.wait(lambda: self.condition(AI, "sev1", "Contained").get("status") == "True", "the SEV1 contained")
        assert self.replicas(DEPLOY, "refund-agent-worker") == 0 and self.replicas(STS, "refund-ledger") == 0
        paused = cluster.get(SCALEDOBJECTS, "refund-queue")["metadata"]["annotations"]
        assert paused["autoscaling.keda.sh/paused-replicas"] == "0"
        evidence = cluster.status(AI, "sev1")["evidence"]["configMap"]
        assert cluster.get(CM, evidence)["immutable"] is True
        self.wait(
            lambda: [e for e in cluster.list("v1/events") if e["involvedObject"]["name"] == "sev1"], "its Events"
        )
        # Undo: the blast radius from the agent's ledger (the operator reads its Secret, by name), the plan
        # approved by on-call, the compensation Job created.
        with open_ledger(self.ledger) as actions:
            actions.record(refund("k1", 1, "o1"))
            actions.record(refund("k2", 2, "o1"))
        window = {"start": "2026-11-21T03:00:00Z", "end": "2026-11-21T03:10:00Z"}
        cluster.patch(AI, "sev1", {"spec": {"window": window}})
        self.wait(lambda: (cluster.status(AI, "sev1").get("blastRadius") or {}).get("actions") == 2, "blast radius")
        plan = json.loads(self.cli("compensate", "sev1", "--duplicates-only", "--ledger", self.ledger, "-o", "json"))
        self.cli("compensate", "sev1", "--duplicates-only", "--ledger", self.ledger, "--approve", plan["hash"])
        job = compensation_job_name("sev1", plan["hash"])
        self.wait(lambda: cluster.get(JOBS, job), "the compensation Job")
        self.cli("status")
        self.cli("release", "sev1")
        # Its postmortem, written by the operator once resolved, read by on-call; a refresh is asked for by on-call.
        assert "# Postmortem: sev1 (final)" in self.cli("postmortem", "sev1")
        assert "## Review questions" in self.cli("postmortem", "sev1", "--refresh")
        # A regression case from it (its evidence read), accepted by the operator, exported for Git.
        self.cli("regression", "sev1", "--expect", "refund each order once", "--max-calls", "issue_refund:order_id=1")
        self.wait(
            lambda: any(c["status"] == "True" for c in cluster.status(ARC, "sev1").get("conditions") or []),
            "the case accepted",
        )
        assert "name: sev1" in self.cli("cases", "-o", "yaml")
        self.wait(lambda: self.replicas(DEPLOY, "refund-agent-worker") == 2, "the worker restored")
        self.wait(lambda: self.replicas(STS, "refund-ledger") == 1, "the ledger restored")

        # The playbook's rollback took revision 3 out and marked it bad; on-call pins revision 2, then a fix
        # (a new prompt, revision 4) lets the pin go.
        assert self.verdict(3) == "bad" and self.wired(DEPLOY, "refund-agent-worker") == "2"
        self.cli("rollback", "refund-agent", "--to", "2")
        agent["spec"]["bundle"]["prompt"]["template"] = "You are the refund assistant, v4."
        cluster.apply([agent])
        self.cli("rollback", "refund-agent", "--clear")
        self.wait(lambda: self.wired(DEPLOY, "refund-agent-worker") == "4", "revision 4 wired")

        # The redeploy gate: revision 5 waits for its evaluation Job, which passes (the test plays the Job
        # controller), then rolls out.
        agent["spec"]["evaluation"] = EVALUATION
        agent["spec"]["bundle"]["prompt"]["template"] = "You are the refund assistant, v5."
        cluster.apply([agent])
        job = self.wait(lambda: evaluation_jobs(cluster), "the evaluation Job of revision 5")[0]
        assert [c["name"] for c in cases_given(cluster, job)] == ["sev1"]
        finish_job(cluster, job["metadata"]["name"], message=report(passed=["sev1"]), exit_code=0)
        self.wait(lambda: self.wired(DEPLOY, "refund-agent-worker") == "5", "revision 5 wired once it passed")

        # A drill: the agent's runtime (its own Role) follows and acknowledges; on-call runs it; the checklist shows it.
        with agent_runtime(cluster, "", self.workdir) as (_, ack):
            self.wait(lambda: ack.reported >= 1, "the runtime acknowledging")
            assert "Passed: contained in" in self.cli("drill", "refund-agent", "--name", "game-day", "--timeout", "30")
            self.cli("readiness", "refund-agent")
        self.wait(
            lambda: "drill game-day contained it" in str(cluster.status(AD, "refund-agent").get("readiness")),
            "the drill in the readiness checklist",
        )

        # An Alertmanager alert with no namespace label: the operator finds its agent and opens an incident.
        self.alert({"alertname": "RefundStorm", "agent": "refund-agent", "severity": "SEV3", "class": "other"})
        opened = self.wait(
            lambda: [i for i in cluster.list(AI) if i["metadata"]["name"] not in ("sev1", "tourniquet-canary")],
            "the alert's incident",
        )
        name = opened[0]["metadata"]["name"]
        self.wait(lambda: cluster.status(AI, name).get("conditions"), "the alert's incident handled")
        cluster.patch(AI, name, {"spec": {"resolved": True}})
        self.wait(lambda: cluster.status(AI, name).get("phase") == "Resolved", "resolved")

        # Deleting the agent: its finalizer unwires both consumers.
        cluster.delete(AD, "refund-agent")
        self.wait(lambda: cluster.get(AD, "refund-agent") is None, "the agent deleted")
        self.wait(
            lambda: self.wired(DEPLOY, "refund-agent-worker") is None and self.wired(STS, "refund-ledger") is None,
            "both consumers unwired",
        )
        self.check()


@pytest.fixture
def lifecycle(
    cluster: RealCluster, oncall_kubeconfig: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Lifecycle:
    cluster.apply([KEDA_CRD])
    http = free_port()
    monkeypatch.setenv("TOURNIQUET_HTTP_PORT", str(http))
    monkeypatch.setenv("TOURNIQUET_HTTP_HOST", "127.0.0.1")
    monkeypatch.setenv("TOURNIQUET_RECEIVER_TOKEN", TOKEN)
    monkeypatch.setenv("TOURNIQUET_CANARY_NAMESPACE", cluster.namespace)
    monkeypatch.setenv("TOURNIQUET_CANARY_SECONDS", "1")
    return Lifecycle(cluster, oncall_kubeconfig, http, str(tmp_path / "ledger.db"), tmp_path)


@pytest.fixture
def run_operator(cluster: RealCluster, kubeconfig: str) -> Iterator[Callable[[], OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start() -> OperatorProcess:
        process = OperatorProcess(kubeconfig, scope=operator_scope(cluster)).start()
        started.append(process)
        return process

    yield start
    for process in started:
        # Without a grant Kopf needs for a watch, its watcher sleeps between retries of the refused list; stopped
        # in that sleep, Kopf 1.45 ends with a TimeoutError from the cancelled wait (Python 3.11's wait_for).
        # That is the operator stopping, not the lifecycle: the test's verdict is already in.
        with contextlib.suppress(TimeoutError):
            process.stop()


def test_the_charts_roles_carry_the_whole_lifecycle_with_nothing_refused(
    cluster: RealCluster, lifecycle: Lifecycle, run_operator: Callable[[], OperatorProcess]
) -> None:
    lifecycle.since = cluster.mark()
    run_operator()
    lifecycle.run()
    users = {c.user for c in cluster.calls(lifecycle.since)}
    operator_user = "system:serviceaccount:{}:{}".format(*operator_account())
    assert operator_user in users and "alice" in users, users  # both identities were exercised


@pytest.mark.parametrize("grant", _grant_params())
def test_without_any_one_grant_the_lifecycle_fails(
    grant: Grant,
    cluster: RealCluster,
    lifecycle: Lifecycle,
    run_operator: Callable[[], OperatorProcess],
) -> None:
    cluster.apply(without(chart_install(cluster.namespace), grant))
    user = (
        "system:serviceaccount:{}:{}".format(*operator_account()) if grant.owner == "operator" else "alice"
    )
    groups = [] if grant.owner == "operator" else [ONCALL_GROUP]
    # The operator's ClusterRole is bound cluster-wide: its grants are checked in every namespace.
    cluster_scope = grant.owner == "operator" and grant.role == "ClusterRole"
    cluster.wait_denied(user, groups, grant.group, grant.resource, grant.verb, cluster_scope=cluster_scope)
    lifecycle.since = cluster.mark()
    run_operator()
    with pytest.raises(AssertionError) as failed:  # Refused, or a step that never happened
        lifecycle.run()
    print(f"without {grant}: {failed.value}")
    if os.environ.get("TOURNIQUET_RBAC_REPORT"):
        with Path(os.environ["TOURNIQUET_RBAC_REPORT"]).open("a") as report:
            report.write(f"{grant}\t{str(failed.value).splitlines()[0][:300]}\n")
