"""The Prometheus adapter sorts every failure once: the rule is wrong, or there is no verdict at all."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.detection.conftest import FakePrometheus, free_port
from tourniquet.adapters.prometheus import (
    PrometheusQuerier,
    PrometheusSettings,
    PrometheusUnavailable,
    QueryRejected,
)

VECTOR = [{"metric": {"agent": "a", "task": "t"}, "value": [1700000000.0, "3"]}]


def querier(url: str, **options) -> PrometheusQuerier:
    return PrometheusQuerier(PrometheusSettings(url=url, **options))


async def test_an_instant_query_returns_the_vector_and_asks_prometheus_to_stop_at_the_timeout(
    fake_prometheus: FakePrometheus,
):
    fake_prometheus.results["up"] = VECTOR
    client = querier(fake_prometheus.url, timeout_seconds=2.5, token="s3cret")
    try:
        assert await client.query("up") == VECTOR
        assert await client.query("up", at=1700000000.5) == VECTOR
    finally:
        client.close()
    assert fake_prometheus.queries[0] == {"query": "up", "timeout": "2.5s"}
    assert fake_prometheus.queries[1]["time"] == "1700000000.500"
    assert fake_prometheus.headers[0]["Authorization"] == "Bearer s3cret"


async def test_bad_promql_is_the_rule_s_fault(fake_prometheus: FakePrometheus):
    fake_prometheus.rejected["sum("] = 'invalid parameter "query": 1:5: parse error: unclosed left parenthesis'
    client = querier(fake_prometheus.url)
    try:
        with pytest.raises(QueryRejected) as caught:
            await client.query("sum(")
    finally:
        client.close()
    assert caught.value.status == 400 and caught.value.error_type == "bad_data"
    assert str(caught.value) == (
        "Prometheus rejected the query (400 bad_data): invalid parameter \"query\": 1:5: parse error: "
        "unclosed left parenthesis"
    )


@pytest.mark.parametrize(
    ("mode", "reason", "words"),
    [
        ("503", "PrometheusError", "answered 503: TSDB not ready"),
        ("garbage", "PrometheusBadResponse", "did not answer as the Prometheus query API"),
    ],
)
async def test_a_failing_prometheus_gives_no_verdict(
    fake_prometheus: FakePrometheus, mode: str, reason: str, words: str
):
    fake_prometheus.mode = mode
    client = querier(fake_prometheus.url)
    try:
        with pytest.raises(PrometheusUnavailable) as caught:
            await client.query("up")
    finally:
        client.close()
    assert caught.value.reason == reason
    assert words in caught.value.message


async def test_a_slow_prometheus_times_out(fake_prometheus: FakePrometheus):
    fake_prometheus.delay = 2.0
    client = querier(fake_prometheus.url, timeout_seconds=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(PrometheusUnavailable) as caught:
            await client.query("up")
    finally:
        client.close()
    assert time.monotonic() - started < 1.5  # not retried into minutes
    assert caught.value.reason == "PrometheusTimeout"
    assert caught.value.message == f"Prometheus at {fake_prometheus.url} did not answer within 0.3s"


async def test_an_unreachable_prometheus_says_so_quickly():
    url = f"http://127.0.0.1:{free_port()}"
    client = querier(url)
    started = time.monotonic()
    try:
        with pytest.raises(PrometheusUnavailable) as caught:
            await client.query("up")
    finally:
        client.close()
    assert time.monotonic() - started < 1.0
    assert caught.value.reason == "PrometheusUnreachable"
    assert caught.value.message == f"Prometheus at {url} is unreachable: Connection refused"


def test_settings_from_the_environment(tmp_path: Path):
    assert PrometheusSettings.from_env({}) is None  # detection off
    token = tmp_path / "token"
    token.write_text("abc\n")
    settings = PrometheusSettings.from_env(
        {
            "TOURNIQUET_PROMETHEUS_URL": "https://prometheus.monitoring:9090/",
            "TOURNIQUET_PROMETHEUS_TIMEOUT_SECONDS": "2",
            "TOURNIQUET_PROMETHEUS_TOKEN_FILE": str(token),
        }
    )
    assert settings == PrometheusSettings(url="https://prometheus.monitoring:9090", timeout_seconds=2, token="abc")
    with pytest.raises(ValueError, match="is not an http\\(s\\) URL such as http://prometheus:9090"):
        PrometheusSettings.from_env({"TOURNIQUET_PROMETHEUS_URL": "prometheus:9090"})
    with pytest.raises(ValueError, match="TOURNIQUET_PROMETHEUS_TIMEOUT_SECONDS='0' must be greater than 0"):
        PrometheusSettings.from_env(
            {"TOURNIQUET_PROMETHEUS_URL": "http://p:9090", "TOURNIQUET_PROMETHEUS_TIMEOUT_SECONDS": "0"}
        )


async def test_a_silent_prometheus_fails_the_next_queries_at_once_then_is_asked_again(fake_prometheus: FakePrometheus):
    fake_prometheus.delay = 1.0
    client = querier(fake_prometheus.url, timeout_seconds=0.3)
    try:
        with pytest.raises(PrometheusUnavailable):
            await client.query("up")
        started = time.monotonic()
        for _ in range(5):  # a thousand agents' queries do not each wait for their own timeout
            with pytest.raises(PrometheusUnavailable, match=r"did not answer within 0\.3s"):
                await client.query("up")
        assert time.monotonic() - started < 0.1
        assert len(fake_prometheus.queries) == 1
        fake_prometheus.delay = 0
        time.sleep(0.35)
        assert await client.query("up") == []  # asked again after one timeout: it recovered
    finally:
        client.close()
