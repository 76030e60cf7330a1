"""The metrics a scrape sees are exactly the documented ones: the built-in detection rules depend on them."""

from __future__ import annotations

import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tourniquet.runtime import AgentMetrics, Guard, StaticControl, serve_metrics
from tourniquet.runtime import metrics as metrics_module

DOCUMENTED_LABELS = {
    "tourniquet_agent_tool_calls_total": {"agent", "tool", "outcome"},
    "tourniquet_agent_task_failures_total": {"agent", "task"},
    "tourniquet_agent_tokens_total": {"agent", "kind"},
    "tourniquet_agent_cost_dollars_total": {"agent"},
    "tourniquet_agent_policy_denials_total": {"agent", "tool"},
    "tourniquet_agent_context_tokens": {"agent"},
    "tourniquet_agent_repeated_tool_calls_total": {"agent", "tool"},
    "tourniquet_agent_sessions_total": {"agent"},
    "tourniquet_agent_shadow_mode": {"agent"},
    "tourniquet_agent_tool_revoked": {"agent", "tool"},
}


def scraped_series(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    series: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.endswith("_created"):
                series.setdefault(s.name, []).append((s.labels, s.value))
    return series


def test_the_module_documents_exactly_the_metrics_it_exposes() -> None:
    documented = set(re.findall(r"``(tourniquet_agent_\w+)``", metrics_module.__doc__ or ""))
    metrics = AgentMetrics("refund-agent")
    metrics.declare_tools(["issue_refund"])
    metrics.task_failed("refund_request")
    exposed = set(scraped_series(metrics.exposition()))

    assert documented == set(DOCUMENTED_LABELS) == exposed


def test_a_scrape_after_some_calls_has_every_name_with_its_labels() -> None:
    metrics = AgentMetrics("refund-agent")
    control = StaticControl(revoked_tools=frozenset({"send_email"}))
    guard = Guard(control, None, metrics, agent="refund-agent", tools={"lookup_order": "read", "send_email": "write"})
    metrics.session_started()
    with guard.task("refund_request", task_id="t1"):
        guard.call("lookup_order", {"order_id": "A1"}, lambda order_id: order_id)
        guard.call("lookup_order", {"order_id": "A1"}, lambda order_id: order_id)
        guard.deny("lookup_order", "not this customer's order")
    try:
        with guard.task("refund_request"):
            guard.call("send_email", {"to": "a@example.com"}, lambda to: None)
    except PermissionError:
        pass
    metrics.record_usage(prompt_tokens=800, completion_tokens=90, cost_dollars=0.25, context_tokens=5120)

    server, _ = serve_metrics(0, registry=metrics, addr="127.0.0.1")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    series = scraped_series(text)

    for name, labels in DOCUMENTED_LABELS.items():
        assert series.get(name), f"{name} is missing from the scrape"
        assert all(set(sample_labels) == labels for sample_labels, _ in series[name]), name

    def value(name: str, **labels: str) -> float:
        wanted = {"agent": "refund-agent", **labels}
        return next(v for sample_labels, v in series[name] if sample_labels == wanted)

    assert value("tourniquet_agent_tool_calls_total", tool="lookup_order", outcome="ok") == 2
    assert value("tourniquet_agent_tool_calls_total", tool="lookup_order", outcome="denied") == 1
    assert value("tourniquet_agent_tool_calls_total", tool="send_email", outcome="revoked") == 1
    assert value("tourniquet_agent_tool_calls_total", tool="send_email", outcome="error") == 0  # created at zero
    assert value("tourniquet_agent_repeated_tool_calls_total", tool="lookup_order") == 1
    assert value("tourniquet_agent_policy_denials_total", tool="lookup_order") == 1
    assert value("tourniquet_agent_task_failures_total", task="refund_request") == 1
    assert value("tourniquet_agent_tokens_total", kind="prompt") == 800
    assert value("tourniquet_agent_tokens_total", kind="completion") == 90
    assert value("tourniquet_agent_cost_dollars_total") == 0.25
    assert value("tourniquet_agent_context_tokens") == 5120
    assert value("tourniquet_agent_sessions_total") == 1
    assert value("tourniquet_agent_tool_revoked", tool="send_email") == 1
    assert value("tourniquet_agent_shadow_mode") == 0


def test_two_agents_can_share_one_registry_and_runtimes_do_not_collide() -> None:
    shared = AgentMetrics("refund-agent")
    other = AgentMetrics("pricing-agent", registry=shared.registry)
    separate = AgentMetrics("refund-agent")
    shared.session_started()
    other.session_started()
    other.session_started()

    assert shared.registry.get_sample_value("tourniquet_agent_sessions_total", {"agent": "refund-agent"}) == 1
    assert shared.registry.get_sample_value("tourniquet_agent_sessions_total", {"agent": "pricing-agent"}) == 2
    assert separate.registry.get_sample_value("tourniquet_agent_sessions_total", {"agent": "refund-agent"}) == 0
