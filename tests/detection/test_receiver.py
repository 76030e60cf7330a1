"""The Alertmanager webhook receiver: authenticated, de-duplicated, and a resolved alert resolves nothing."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import AI, Cluster, example
from tourniquet.receiver import Receiver, TokenSource

TOKEN = "s3cret-token"


def alert(status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "HighRefundRate", "agent": "refund-agent", "severity": "SEV1", **labels},
        "annotations": {"summary": "refunds at 10x the usual rate"},
        "startsAt": "2026-11-21T03:02:00.5Z",
        "endsAt": "2026-11-21T03:20:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "fingerprint": "a1b2c3",
    }


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "status": "firing", "receiver": "tourniquet", "groupLabels": {}, "alerts": list(alerts)}


@pytest.fixture
async def serve(kube) -> AsyncIterator[Callable[[tuple[str, ...] | None], Awaitable[str]]]:
    """Start a receiver for an operator serving the namespaces given (None: all of them); returns its URL."""
    started: list[Receiver] = []

    async def start(namespaces: tuple[str, ...] | None) -> str:
        receiver = Receiver(lambda: kube, TokenSource(TOKEN), namespaces)
        started.append(receiver)
        return f"http://127.0.0.1:{await receiver.start('127.0.0.1', 0)}"

    yield start
    for receiver in started:
        await receiver.stop()


@pytest.fixture
async def receiver(serve, cluster: Cluster) -> str:
    """The receiver of the operator the tests run: serving every namespace on the emulator, the test's own
    on the real control plane (as the chart installed with watchNamespaces runs it)."""
    return str(await serve(None if cluster.backend == "emulator" else (cluster.namespace,)))


async def post(url: str, body: Any, token: str | None = TOKEN, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        data = raw if raw is not None else None
        kwargs: dict[str, Any] = {"data": data} if raw is not None else {"json": body}
        async with session.post(f"{url}/alertmanager", headers=headers, **kwargs) as answer:
            return answer.status, await answer.json()


def agent(cluster: Cluster, namespace: str = "default") -> None:
    docs = copy.deepcopy(example())
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    cluster.apply(docs)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing bearer token: send 'Authorization: Bearer <token>'"),
        ("guess", "wrong bearer token"),
    ],
)
async def test_an_unauthenticated_notification_is_refused(receiver: str, cluster: Cluster, token, reason: str):
    agent(cluster)
    status, body = await post(receiver, notification(alert()), token=token)
    assert (status, body) == (401, {"status": "refused", "reason": reason})
    assert cluster.list(AI) == []


async def test_without_a_configured_token_every_notification_is_refused(kube, cluster: Cluster):
    served = Receiver(lambda: kube, TokenSource())
    port = await served.start("127.0.0.1", 0)
    try:
        status, body = await post(f"http://127.0.0.1:{port}", notification(alert()), token="anything")
    finally:
        await served.stop()
    assert status == 401
    assert body["reason"] == (
        "the receiver has no token configured: set TOURNIQUET_RECEIVER_TOKEN or TOURNIQUET_RECEIVER_TOKEN_FILE on "
        "the operator"
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "the body is not JSON"),
        (b'{"alerts": 3}', "the body has no 'alerts' list (expected an Alertmanager webhook notification)"),
    ],
)
async def test_a_body_that_is_not_a_notification_is_a_400(receiver: str, raw: bytes, reason: str):
    status, body = await post(receiver, None, raw=raw)
    assert status == 400 and body["reason"].startswith(reason)


async def test_an_alert_opens_an_incident_and_repeats_count_on_it(receiver: str, cluster: Cluster):
    agent(cluster)
    status, body = await post(receiver, notification(alert()))
    assert status == 200, body
    (outcome,) = body["alerts"]
    assert outcome["outcome"] == "opened" and outcome["agent"] == "refund-agent"
    (incident,) = cluster.list(AI)
    assert incident["metadata"]["name"] == outcome["incident"]
    assert incident["metadata"]["name"].startswith("refund-agent-high-refund-rate-")
    assert incident["spec"]["severity"] == "SEV1" and incident["spec"]["class"] == "other"
    assert incident["spec"]["window"] == {"start": "2026-11-21T03:02:00Z"}
    assert incident["spec"]["summary"] == "Alert HighRefundRate on refund-agent: refunds at 10x the usual rate"
    assert incident["status"]["detection"]["source"] == "alertmanager"

    status, body = await post(receiver, notification(alert()))  # Alertmanager's repeat_interval
    assert status == 200 and body["alerts"][0]["outcome"] == "updated"
    (incident,) = cluster.list(AI)
    assert incident["status"]["detection"]["count"] == 2


async def test_a_resolved_alert_is_recorded_and_resolves_nothing(receiver: str, cluster: Cluster):
    agent(cluster)
    await post(receiver, notification(alert()))
    status, body = await post(receiver, notification(alert("resolved")))
    assert status == 200 and body["alerts"][0]["outcome"] == "cleared"
    (incident,) = cluster.list(AI)
    assert incident["status"]["detection"]["clearedAt"] == "2026-11-21T03:20:00.000000Z"
    assert not incident["spec"].get("resolved")  # a human resolves


async def test_alerts_map_to_the_right_namespace_or_are_refused_with_the_reason(receiver: str, cluster: Cluster):
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "support"}}])
    agent(cluster, "support")
    status, body = await post(
        receiver,
        notification(
            alert(),  # no namespace label: found by name
            alert(agent="ghost-agent", alertname="Ghost"),
            alert(namespace="default", alertname="Elsewhere"),
            {"labels": {"alertname": "NoAgent"}},
        ),
    )
    assert status == 200, body
    outcomes = [(o["alertname"], o["outcome"], o.get("reason", "")) for o in body["alerts"]]
    assert outcomes[0][:2] == ("HighRefundRate", "opened")
    ghost = "no AgentDeployment named ghost-agent in any namespace" + (
        "" if cluster.backend == "emulator" else f" this operator watches ({cluster.namespace})"
    )
    assert outcomes[1] == ("Ghost", "refused", ghost)
    elsewhere = (
        "AgentDeployment refund-agent not found in namespace default"
        if cluster.backend == "emulator"
        else f"namespace default is not watched by this operator (it watches {cluster.namespace})"
    )
    assert outcomes[2] == ("Elsewhere", "refused", elsewhere)
    assert outcomes[3] == ("NoAgent", "refused", "no agent label (the AgentDeployment's name)")
    home = "support" if cluster.backend == "emulator" else cluster.namespace  # the test's, on the real one
    (incident,) = cluster.list(AI, namespace=home)
    assert incident["spec"]["agents"] == ["refund-agent"]


async def test_a_notification_none_of_whose_alerts_map_is_a_400(receiver: str, cluster: Cluster):
    status, body = await post(receiver, notification({"labels": {"alertname": "NoAgent"}}))
    assert status == 400
    assert body["reason"] == "no alert could be mapped: alerts[0] NoAgent: no agent label (the AgentDeployment's name)"


async def test_the_operator_metrics_are_served(receiver: str):
    async with aiohttp.ClientSession() as session, session.get(f"{receiver}/metrics") as answer:
        text = await answer.text()
    assert answer.status == 200
    for name in (
        "tourniquet_detection_latency_seconds",
        "tourniquet_detection_evaluation_errors_total",
        "tourniquet_incidents_open",
        "tourniquet_containment_latency_seconds",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text


async def test_an_alert_for_a_namespace_the_operator_does_not_watch_is_a_422_naming_it(serve, cluster: Cluster):
    agent(cluster)
    watching_one = await serve((cluster.namespace,))  # `tourniquet run -n NS`, as the chart runs it
    status, body = await post(watching_one, notification(alert(namespace="elsewhere")))
    # A 4xx: Alertmanager retries a 5xx forever, and no retry makes the namespace watched.
    assert status == 422, body
    assert body["reason"] == (
        "no alert could be mapped: alerts[0] HighRefundRate: namespace elsewhere is not watched by this "
        f"operator (it watches {cluster.namespace})"
    )
    assert cluster.list(AI) == []
    # An alert without a namespace label is looked up in the watched namespaces only.
    status, body = await post(watching_one, notification(alert()))
    assert status == 200 and body["alerts"][0]["outcome"] == "opened", body


@pytest.mark.real  # RBAC: the chart grants the operator nothing outside the namespaces it watches
async def test_an_alert_for_a_namespace_the_operator_may_not_read_is_a_422_naming_it(serve, cluster: Cluster):
    agent(cluster)
    not_told = await serve(None)  # `kopf run -n NS`: the operator does not know its namespaces
    status, body = await post(not_told, notification(alert(namespace="elsewhere")))
    assert status == 422, body
    assert body["reason"].startswith(
        "no alert could be mapped: alerts[0] HighRefundRate: namespace elsewhere is not watched by this operator "
        "(it may not read AgentDeployments there: "
    )
    assert cluster.list(AI) == []
