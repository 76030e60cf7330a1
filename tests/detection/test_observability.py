"""The operator's metrics: open incidents follow the cluster, latencies are observed once."""

from __future__ import annotations

from tourniquet import observability

REGISTRY = observability.REGISTRY


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def incident(severity: str = "SEV1", klass: str = "tool-misuse", resolved: bool = False) -> dict:
    return {"spec": {"severity": severity, "class": klass, "resolved": resolved}, "metadata": {}}


def test_open_incidents_follow_severity_class_resolution_and_deletion():
    metrics = observability.OperatorMetrics()  # an operator's, as made at start-up

    def value(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    track_incident = metrics.open_incidents.track
    gauge = "tourniquet_incidents_open"
    track_incident("ns", "a", incident())
    track_incident("ns", "a", incident())  # the same event again: counted once
    track_incident("ns", "b", incident("SEV2", "cost-runaway"))
    assert value(gauge, severity="SEV1", **{"class": "tool-misuse"}) == 1
    assert value(gauge, severity="SEV2", **{"class": "cost-runaway"}) == 1
    track_incident("ns", "a", incident("SEV2", "cost-runaway"))  # on-call re-classified it
    assert value(gauge, severity="SEV1", **{"class": "tool-misuse"}) == 0
    assert value(gauge, severity="SEV2", **{"class": "cost-runaway"}) == 2
    track_incident("ns", "a", incident("SEV2", "cost-runaway", resolved=True))
    track_incident("ns", "b", None)  # deleted
    assert value(gauge, severity="SEV2", **{"class": "cost-runaway"}) == 0
    exposed = metrics.exposition().decode()  # what /metrics serves: the gauge, and the process's registry
    assert 'tourniquet_incidents_open{class="cost-runaway",severity="SEV2"} 0.0' in exposed
    assert "# TYPE tourniquet_containment_latency_seconds histogram" in exposed


def test_lever_and_resolution_times_are_observed_once_each():
    def count(name: str, **labels: str) -> float:
        return value(f"{name}_count", **labels)

    before = (
        count("tourniquet_containment_latency_seconds", lever="shadow"),
        count("tourniquet_containment_latency_seconds", lever="all"),
        count("tourniquet_incident_resolution_seconds"),
    )
    first = {"timings": {"levers": {"refund-agent/shadow": 0.4}, "containedSeconds": 0.4}}
    observability.observe_incident_timings({}, first)
    observability.observe_incident_timings(first, first)  # a later write: nothing new
    resolved = {"timings": {**first["timings"], "resolvedSeconds": 600.0}}
    observability.observe_incident_timings(first, resolved)
    after = (
        count("tourniquet_containment_latency_seconds", lever="shadow"),
        count("tourniquet_containment_latency_seconds", lever="all"),  # the incident as a whole
        count("tourniquet_incident_resolution_seconds"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


def test_a_deleted_agents_readiness_series_go_and_no_other_agents():
    from tourniquet import review_metrics

    ready = {"items": [{"name": "killSwitch", "ready": True}, {"name": "versionPin", "ready": False}]}
    review_metrics.observe_readiness("gone-ns", "a", ready)
    review_metrics.observe_readiness("gone-ns", "b", ready)
    assert value("tourniquet_agent_readiness_score", agent_namespace="gone-ns", agent="a") == 1
    review_metrics.forget_agent("gone-ns", "a")
    assert (
        REGISTRY.get_sample_value("tourniquet_agent_readiness_score", {"agent_namespace": "gone-ns", "agent": "a"})
        is None
    )
    assert (
        REGISTRY.get_sample_value(
            "tourniquet_agent_readiness", {"agent_namespace": "gone-ns", "agent": "a", "item": "killSwitch"}
        )
        is None
    )
    assert value("tourniquet_agent_readiness", agent_namespace="gone-ns", agent="b", item="killSwitch") == 1
    review_metrics.forget_agent("gone-ns", "b")
