"""Every built-in template, evaluated by a real Prometheus over deterministic history (promtool backfill):
it fires on the failure it names and stays quiet on healthy agents."""

from __future__ import annotations

import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.detection.conftest import PROMTOOL, PrometheusProcess, needs_prometheus
from tourniquet.adapters.prometheus import PrometheusQuerier, PrometheusSettings
from tourniquet.domain.detection import compile_rules, samples_for_agent

pytestmark = needs_prometheus

STEP = 15
NOW = int(time.time()) // STEP * STEP
T = NOW - 3600  # evaluate an hour ago: the backfilled blocks, clear of the head block


def history() -> str:
    """OpenMetrics for a set of agents, one behaviour each, sampled every 15 s up to T."""
    families: dict[tuple[str, str], dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))

    def series(metric: str, kind: str, labels: str, start: int, value: Callable[[int], float]) -> None:
        for t in range(T - start, T + 1, STEP):
            families[(metric, kind)][labels].append((t, value(T - t)))  # value(age): age 0 is T

    tokens, failures = ("tourniquet_agent_tokens", "counter"), ("tourniquet_agent_task_failures", "counter")
    repeats, cost = ("tourniquet_agent_repeated_tool_calls", "counter"), ("tourniquet_agent_cost_dollars", "counter")
    sessions, denials = ("tourniquet_agent_sessions", "counter"), ("tourniquet_agent_policy_denials", "counter")
    context = ("tourniquet_agent_context_tokens", "gauge")

    def counter(family: tuple[str, str], labels: str, start: int, value: Callable[[int], float]) -> None:
        series(family[0], family[1], labels, start, value)

    # Tokens: 10/s throughout, or 10/s then 100/s for the last minute.
    counter(tokens, 'agent="steady",kind="prompt"', 1800, lambda age: (1800 - age) * 10)
    counter(tokens, 'agent="surge",kind="prompt"', 1800, lambda age: (1800 - age) * 10 + max(0, 60 - age) * 90)
    # Task failures: a new series reaching 3, an old one gaining 4, two calm ones.
    counter(failures, 'agent="storm-new",task="refund"', 90, lambda age: min(3, 1 + (90 - age) // 30))
    counter(failures, 'agent="storm-old",task="refund"', 1800, lambda age: 10 + max(0, 4 - age // 30))
    counter(failures, 'agent="calm",task="refund"', 1800, lambda age: 2)
    counter(failures, 'agent="calm-new",task="refund"', 60, lambda age: 2)
    # Identical tool calls: 5 repeats in two minutes, or 2.
    counter(repeats, 'agent="looper",tool="lookup_order"', 1800, lambda age: max(0, 5 - age // 24))
    counter(repeats, 'agent="ok-loop",tool="lookup_order"', 1800, lambda age: 2 if age < 60 else 0)
    # Spend: $3 in the last hour over 2 sessions, or $1 over 10.
    counter(cost, 'agent="spender"', 3900, lambda age: max(0, 3600 - age) / 1200)
    counter(cost, 'agent="frugal"', 3900, lambda age: max(0, 3600 - age) / 3600)
    counter(sessions, 'agent="spender"', 3900, lambda age: 0 if age > 1800 else (1 if age > 600 else 2))
    counter(sessions, 'agent="frugal"', 3900, lambda age: max(0, 3600 - age) // 360)
    # Policy denials: on a declared tool (series at 0 before), on a new one, or none.
    counter(denials, 'agent="denied",tool="issue_refund"', 1800, lambda age: 1 if age < 60 else 0)
    counter(denials, 'agent="denied-new",tool="wire_money"', 45, lambda age: 1)
    counter(denials, 'agent="clean",tool="issue_refund"', 1800, lambda age: 0)
    # Context: 2k → 9k in ten minutes; a big steady one; a small one growing tenfold.
    series(*context, 'agent="grower"', 1800, lambda age: 2000 if age >= 600 else 9000)
    series(*context, 'agent="big"', 1800, lambda age: 20000)
    series(*context, 'agent="small-grower"', 1800, lambda age: 100 if age >= 600 else 1000)

    lines = []
    for (metric, kind), by_labels in families.items():
        lines.append(f"# TYPE {metric} {kind}")
        sample = f"{metric}_total" if kind == "counter" else metric
        for labels, points in by_labels.items():
            lines += [f"{sample}{{{labels}}} {value:g} {t}" for t, value in points]
    return "\n".join([*lines, "# EOF", ""])


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> PrometheusProcess:
    assert PROMTOOL is not None
    workdir = tmp_path_factory.mktemp("backfill")
    data = workdir / "history.om"
    data.write_text(history())
    created = subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(data), str(workdir / "tsdb")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    process = PrometheusProcess(workdir, targets=[]).start()
    yield process
    process.stop()


CASES = [
    ({"template": "retryStorm"}, {"storm-new", "storm-old"}, {"calm", "calm-new"}),
    ({"template": "loop"}, {"looper"}, {"ok-loop"}),
    ({"template": "tokenSurge"}, {"surge"}, {"steady"}),
    ({"template": "budgetExceeded", "params": {"dollarsPerHour": 2}}, {"spender"}, {"frugal"}),
    ({"template": "budgetExceeded", "params": {"dollarsPerSession": 1}}, {"spender"}, {"frugal"}),
    ({"template": "policyDenial"}, {"denied", "denied-new"}, {"clean"}),
    ({"template": "contextGrowth"}, {"grower"}, {"big", "small-grower"}),
    ({"template": "contextGrowth", "params": {"maxTokens": 15000}}, {"grower", "big"}, {"small-grower"}),
]


@pytest.mark.parametrize(("rule", "fires", "quiet"), CASES, ids=lambda c: str(c) if isinstance(c, dict) else "")
async def test_each_template_fires_on_its_failure_and_only_there(
    backfilled: PrometheusProcess, rule: dict, fires: set[str], quiet: set[str]
):
    client = PrometheusQuerier(PrometheusSettings(url=backfilled.url))
    try:
        verdicts = {}
        for agent in sorted(fires | quiet):
            (compiled,) = compile_rules([{"name": "r", **rule}], agent)
            assert compiled.expr is not None, compiled.error
            verdicts[agent] = bool(samples_for_agent(await client.query(compiled.expr, at=T), agent))
    finally:
        client.close()
    assert {a for a, fired in verdicts.items() if fired} == fires


def test_the_history_is_what_the_cases_assume(backfilled: PrometheusProcess, tmp_path: Path):
    # A sanity check on the data itself, so a failing case above means a wrong rule, not wrong data.
    import json
    import urllib.parse
    import urllib.request

    def value(expr: str) -> float:
        query = urllib.parse.urlencode({"query": expr, "time": T})
        with urllib.request.urlopen(f"{backfilled.url}/api/v1/query?{query}") as answer:
            return float(json.loads(answer.read())["data"]["result"][0]["value"][1])

    assert value('tourniquet_agent_task_failures_total{agent="storm-new"}') == 3
    assert value('rate(tourniquet_agent_tokens_total{agent="surge"}[1m])') == pytest.approx(100, rel=0.1)
    assert value('increase(tourniquet_agent_cost_dollars_total{agent="spender"}[1h])') == pytest.approx(3, rel=0.05)
    assert value('tourniquet_agent_context_tokens{agent="grower"} offset 10m') == 2000


async def test_an_agent_s_rules_in_one_query_give_each_rule_its_own_samples(backfilled: PrometheusProcess):
    from tourniquet.domain.detection import combined_expr, split_combined

    rules = compile_rules([{"name": f"r{i}", **rule} for i, (rule, _, _) in enumerate(CASES)], "storm-new")
    client = PrometheusQuerier(PrometheusSettings(url=backfilled.url))
    try:
        parts = split_combined(await client.query(combined_expr(rules), at=T), rules)
    finally:
        client.close()
    fired = {name for name, samples in parts.items() if samples_for_agent(samples, "storm-new")}
    assert fired == {"r0"}  # storm-new's retry storm, and nothing else
    (sample,) = parts["r0"]
    assert sample["metric"] == {"agent": "storm-new", "task": "refund"}
