"""The operator's API client: proxies from the environment are honoured, decided once."""

from __future__ import annotations

import netrc
import socket
from typing import Any

import pytest

from tourniquet.adapters.kube import CONFIGMAPS, ApiError, KubeApi


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def proxy_everything(env: pytest.MonkeyPatch, url: str) -> None:
    """The API server is http:// on the emulator and https:// on the real control plane: proxy both."""
    env.setenv("HTTP_PROXY", url)
    env.setenv("HTTPS_PROXY", url)


async def test_a_proxy_in_the_environment_carries_the_requests(
    cluster: Any, kubeconfig: str, no_proxy_env: Any
) -> None:
    proxy_everything(no_proxy_env, f"http://127.0.0.1:{_closed_port()}")
    api = await KubeApi.from_config(kubeconfig)
    try:
        with pytest.raises(ApiError) as caught:
            await api.list(CONFIGMAPS, cluster.namespace)
        assert caught.value.transient, "a proxy that refuses connections is an unreachable API, retried"
    finally:
        await api.close()


async def test_no_proxy_exempts_the_api_server(cluster: Any, kubeconfig: str, no_proxy_env: Any) -> None:
    proxy_everything(no_proxy_env, f"http://127.0.0.1:{_closed_port()}")
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1,localhost")
    api = await KubeApi.from_config(kubeconfig)
    try:
        assert isinstance(await api.list(CONFIGMAPS, cluster.namespace), list)
    finally:
        await api.close()


async def test_requests_do_not_read_netrc_each_time(
    cluster: Any, kubeconfig: str, no_proxy_env: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    (tmp_path / "netrc").write_text("machine example.com login me password hunter2\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    reads = []
    original = netrc.netrc.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        reads.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(netrc.netrc, "__init__", counting)
    api = await KubeApi.from_config(kubeconfig)
    try:
        for _ in range(5):
            await api.list(CONFIGMAPS, cluster.namespace)
    finally:
        await api.close()
    assert reads == []


async def test_simultaneous_callers_ask_a_missing_api_once(kube: KubeApi, cluster: Any) -> None:
    import asyncio

    from tests.conftest import wait_for
    from tourniquet.adapters.kube import SCALEDOBJECTS

    if cluster.backend == "real":  # another test may have installed KEDA's CRD on the shared control plane
        cluster.delete("apiextensions.k8s.io/v1/customresourcedefinitions", "scaledobjects.keda.sh")
        wait_for(lambda: not cluster.served("keda.sh/v1alpha1"), timeout=30, what="KEDA's API gone")
    mark = cluster.mark()
    results = await asyncio.gather(*(kube.list_if_served(SCALEDOBJECTS, cluster.namespace) for _ in range(50)))
    assert results == [[]] * 50
    assert len(cluster.requests_to("/keda.sh/", since=mark)) == 1
    await kube.list_if_served(SCALEDOBJECTS, cluster.namespace)  # remembered as absent
    assert len(cluster.requests_to("/keda.sh/", since=mark)) == 1


@pytest.mark.emulator  # fault injection
async def test_a_throttled_request_is_sent_again_after_the_wait_the_server_asks_for(
    kube: KubeApi, cluster: Any
) -> None:
    # Seen on the real server: "429 TooManyRequests: storage is (re)initializing", Retry-After: 1, just after a
    # CRD was applied again. The request was not acted on; the client waits and sends it again.
    cluster.fault("list", "configmaps", status=429, count=2)
    mark = cluster.mark()
    assert isinstance(await kube.list(CONFIGMAPS, cluster.namespace), list)
    assert len(cluster.requests_to("/configmaps", since=mark)) == 3


@pytest.mark.emulator  # fault injection
async def test_a_request_throttled_every_time_fails_with_the_servers_answer(kube: KubeApi, cluster: Any) -> None:
    from tourniquet.adapters.kube import THROTTLED_ATTEMPTS

    cluster.fault("list", "configmaps", status=429, count=None)
    mark = cluster.mark()
    with pytest.raises(ApiError) as caught:
        await kube.list(CONFIGMAPS, cluster.namespace)
    assert caught.value.status == 429 and caught.value.transient
    assert len(cluster.requests_to("/configmaps", since=mark)) == THROTTLED_ATTEMPTS
