"""`kubectl tourniquet blast-radius`, `trace` and `compensate` as on-call runs them: the incident and its agents from
the API (on-call's own credentials), the actions from the shared ledger on PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.conftest import AD, AI, Cluster, example
from tourniquet import cli
from tourniquet.runtime import Action, Trace, args_digest, open_ledger
from tourniquet.runtime.ledger import canonical_json
from tourniquet.runtime.trace import trace_part

T0 = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)
INCIDENT = "dup-refunds"


def refund(key: str, minute: float, order: str, amount: int = 2500) -> Action:
    args = {"order_id": order, "amount_cents": amount}
    return Action(
        idempotency_key=key,
        agent="refund-agent",
        tool="issue_refund",
        args_digest=args_digest("issue_refund", args),
        args_json=canonical_json(args),
        subjects=(f"order:{order}", "customer:7"),
        time=T0 + timedelta(minutes=minute),
        amount=amount,
        amount_unit="USD cents",
        task_id=f"ticket-{key}",
        bundle_revision=1,
    )


@pytest.fixture
def ledger_url(postgres_url: str) -> str:
    with open_ledger(postgres_url) as ledger:
        ledger.record(refund("before", -5, "o1"))
        ledger.record(refund("k1", 1, "o2"), Trace("k1", task_name="refund_request",
                                                   model_output=trace_part({"decision": "refund o2"})))
        ledger.record(refund("k2", 2, "o2"))  # a duplicate
        ledger.record(refund("k3", 3, "o1"))  # a duplicate of a refund before the window
        ledger.record(refund("k4", 4, "o3", amount=1000))
        ledger.record(refund("after", 20, "o3"))
    return postgres_url


@pytest.fixture
def incident(cluster: Cluster) -> str:
    cluster.apply(example())
    cluster.apply(
        [
            {
                "apiVersion": "tourniquet.dev/v1alpha1",
                "kind": "AgentIncident",
                "metadata": {"name": INCIDENT},
                "spec": {
                    "agents": ["refund-agent"],
                    "severity": "SEV1",
                    "contain": [],
                    "window": {"start": "2026-11-21T03:00:00Z", "end": "2026-11-21T03:10:00Z"},
                },
            }
        ]
    )
    return INCIDENT


def run(cluster: Cluster, kubeconfig: str, *args: str) -> Result:
    return CliRunner().invoke(cli.main, [*args, "--kubeconfig", kubeconfig, "-n", cluster.namespace])


@pytest.fixture(autouse=True)
def no_ledger_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOURNIQUET_LEDGER", raising=False)
    monkeypatch.delenv("TOURNIQUET_LEDGER_URL_FILE", raising=False)


def test_blast_radius_counts_the_window_per_tool_and_lists_the_subjects(
    cluster: Cluster, oncall_kubeconfig: str, incident: str, ledger_url: str
) -> None:
    text = run(cluster, oncall_kubeconfig, "blast-radius", incident, "--ledger", ledger_url)
    assert text.exit_code == 0, text.output
    assert "window: 2026-11-21T03:00:00Z (from spec.window.start) to 2026-11-21T03:10:00Z" in text.output
    summary = "4 actions (issue_refund 4) on 4 subjects; 4 reversible, 0 irreversible; amounts: 8500 USD cents"
    assert summary in text.output

    body = json.loads(run(cluster, oncall_kubeconfig, "blast-radius", incident, "--ledger", ledger_url,
                          "-o", "json").output)
    assert (body["actions"], body["subjects"], body["byTool"]) == (4, 4, {"issue_refund": 4})
    assert body["tools"][0]["compensation"] == "reversal"

    listed = run(
        cluster, oncall_kubeconfig, "blast-radius", incident, "--subjects", "-o", "csv", "--ledger", ledger_url
    )
    assert listed.exit_code == 0, listed.output
    assert list(csv.reader(io.StringIO(listed.output))) == [
        ["subject", "actions", "tools"],
        ["customer:7", "4", "issue_refund:4"],
        ["order:o1", "1", "issue_refund:1"],
        ["order:o2", "2", "issue_refund:2"],
        ["order:o3", "1", "issue_refund:1"],
    ]


def test_trace_prints_what_led_to_an_action(
    cluster: Cluster, oncall_kubeconfig: str, incident: str, ledger_url: str
) -> None:
    one = run(cluster, oncall_kubeconfig, "trace", "k1", "--ledger", ledger_url)
    assert one.exit_code == 0, one.output
    assert "refund-agent/issue_refund ok at 2026-11-21T03:01:00Z" in one.output
    assert "task ticket-k1; bundle revision 1" in one.output
    assert 'modelOutput: {"decision": "refund o2"}' in one.output

    window = json.loads(run(cluster, oncall_kubeconfig, "trace", "--incident", incident, "--ledger", ledger_url,
                            "-o", "json").output)
    assert [a["idempotencyKey"] for a in window] == ["k1", "k2", "k3", "k4"]
    assert window[1]["trace"] is None

    missing = run(cluster, oncall_kubeconfig, "trace", "nope", "--ledger", ledger_url)
    assert missing.exit_code == 1 and "no action with idempotency key 'nope'" in missing.output


def test_compensate_is_a_dry_run_until_the_shown_plan_is_approved_and_records_who(
    cluster: Cluster, oncall_kubeconfig: str, incident: str, ledger_url: str
) -> None:
    dry = run(cluster, oncall_kubeconfig, "compensate", incident, "--duplicates-only", "--ledger", ledger_url,
              "-o", "json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.output)
    assert (plan["dryRun"], plan["actions"], plan["planned"]) == (True, 2, 2)
    assert "compensate" not in cluster.get(AI, incident, cluster.namespace)["spec"]  # type: ignore[index]

    with open_ledger(ledger_url) as ledger:
        ledger.record(refund("k5", 5, "o3"))  # another duplicate lands in the window: the plan changes
    stale = run(cluster, oncall_kubeconfig, "compensate", incident, "--duplicates-only", "--approve", plan["hash"],
                "--ledger", ledger_url)
    assert stale.exit_code == 1
    assert "the plan changed since it was shown" in stale.output and "nothing was approved" in stale.output
    assert "compensate" not in cluster.get(AI, incident, cluster.namespace)["spec"]  # type: ignore[index]

    fresh = json.loads(run(cluster, oncall_kubeconfig, "compensate", incident, "--duplicates-only", "--ledger",
                           ledger_url, "-o", "json").output)
    approved = run(cluster, oncall_kubeconfig, "compensate", incident, "--duplicates-only", "--approve",
                   fresh["hash"], "--by", "alice@example.com", "--ledger", ledger_url)
    assert approved.exit_code == 0, approved.output
    assert f"Approved compensation plan {fresh['hash']}" in approved.output
    spec: dict[str, Any] = cluster.get(AI, incident, cluster.namespace)["spec"]  # type: ignore[index]
    assert spec["compensate"] == {
        "approved": True, "planHash": fresh["hash"], "approvedBy": "alice@example.com", "duplicatesOnly": True,
    }


def test_without_a_ledger_the_error_says_where_it_is(
    cluster: Cluster, oncall_kubeconfig: str, incident: str
) -> None:
    cluster.patch(AD, "refund-agent", {"spec": {"ledger": {"secretRef": {"name": "refund-ledger"}}}},
                  namespace=cluster.namespace)
    result = run(cluster, oncall_kubeconfig, "blast-radius", incident)
    assert result.exit_code == 1
    assert "which ledger? give --ledger URL or set TOURNIQUET_LEDGER" in result.output
    assert "Secret refund-ledger, key url" in result.output
