"""The Kubernetes API, as plain dicts.

Built on the official client's asyncio transport (`kubernetes.aio`): it brings kubeconfig,
in-cluster and exec-plugin authentication and TLS. Requests and responses stay plain JSON dicts,
because the generated pydantic models validate every response strictly and cost ~10x on lists.
The mapping from API errors to "retry" or "permanent" lives here and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from kubernetes.aio import client as aio_client
from kubernetes.aio import config as aio_config

FIELD_MANAGER = "tourniquet"
# A 429 with Retry-After (the API server's priority and fairness, or a resource whose storage is (re)initializing
# after its CRD changed) was not acted on: the request is sent again after the wait asked for, as client-go does.
THROTTLED_ATTEMPTS = 5
THROTTLED_WAIT_MAX = 5.0  # seconds, whatever Retry-After asks
log = logging.getLogger(__name__)

T = TypeVar("T")

CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
}


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name)}"
        if subresource:
            base += f"/{subresource}"
        return base


CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
PODS = Resource("", "v1", "pods", "Pod")
EVENTS = Resource("", "v1", "events", "Event")
SECRETS = Resource("", "v1", "secrets", "Secret")
JOBS = Resource("batch", "v1", "jobs", "Job")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
STATEFULSETS = Resource("apps", "v1", "statefulsets", "StatefulSet")
JOBS = Resource("batch", "v1", "jobs", "Job")
NETWORKPOLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
AGENTDEPLOYMENTS = Resource("tourniquet.dev", "v1alpha1", "agentdeployments", "AgentDeployment")
AGENTINCIDENTS = Resource("tourniquet.dev", "v1alpha1", "agentincidents", "AgentIncident")
AGENTDRILLS = Resource("tourniquet.dev", "v1alpha1", "agentdrills", "AgentDrill")
AGENTREGRESSIONCASES = Resource("tourniquet.dev", "v1alpha1", "agentregressioncases", "AgentRegressionCase")
SCALEDOBJECTS = Resource("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject")
# Who am I: the CLI records who overrode an evaluation (every authenticated user may ask).
SELFSUBJECTREVIEWS = Resource("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview", False)
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)

WORKLOADS = {"Deployment": DEPLOYMENTS, "StatefulSet": STATEFULSETS}


Objects = list[dict[str, Any]]


class ApiError(Exception):
    """An API error answer (or a failure to get one), classified once for everyone."""

    def __init__(self, status: int, reason: str, message: str, body: dict[str, Any] | None = None):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def conflict(self) -> bool:
        return self.status == 409 and self.reason != "AlreadyExists"

    @property
    def transient(self) -> bool:
        """Worth retrying: the same request may succeed later (conflicts after a fresh read)."""
        return self.status in (0, 408, 425, 429) or self.status >= 500 or self.conflict


async def with_retries(
    call: Callable[[], Awaitable[T]], *, attempts: int = 5, first_delay: float = 0.05, max_delay: float = 1.0
) -> T:
    """Retry a call on transient errors with jittered exponential backoff; permanent errors pass through."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except ApiError as error:
            if not error.transient or attempt == attempts:
                raise
            log.debug("Retrying after %s (attempt %d of %d)", error, attempt, attempts)
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")


def _settle_proxy(configuration: aio_client.Configuration) -> None:
    """Decide the proxy once, not per request.

    With `trust_env`, aiohttp re-reads the proxy variables and ~/.netrc (a file read in a thread) on every
    request: at a hundred simultaneous incidents that was a tenth of the operator's CPU. The API server
    is reached with tokens or certificates, never netrc, so the environment's proxy (HTTPS_PROXY,
    NO_PROXY, as the Go clients honour them) is resolved here, once, unless the kubeconfig names one.
    """
    configuration.client_session_kwargs = {
        **(getattr(configuration, "client_session_kwargs", None) or {}),
        "trust_env": False,
    }
    if configuration.proxy:
        return
    host = urlsplit(configuration.host)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(host.scheme or "https")
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # public, not in typeshed
    if proxy and not bypass(host.hostname or "", proxies):
        configuration.proxy = proxy


def _retry_after(status: int, headers: Any) -> float | None:
    """Seconds to wait before sending a throttled request again (a 429 with Retry-After), else None."""
    if status != 429:
        return None
    try:
        return min(max(float(headers.get("Retry-After", "")), 0.0), THROTTLED_WAIT_MAX)
    except ValueError:
        return None


class KubeApi:
    """A small async client over `kubernetes.aio`'s transport. Create once per event loop."""

    def __init__(self, api_client: aio_client.ApiClient, *, timeout: float = 30.0):
        self._client = api_client
        self._timeout = timeout
        self.requests = 0  # for tests and benchmarks: how many requests this client made
        self._closed = False
        self._absent: dict[str, float] = {}  # API paths found not served (e.g. KEDA not installed) -> until
        self._probes: dict[str, asyncio.Future[None]] = {}  # optional APIs being asked about right now

    @classmethod
    async def from_config(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeApi:
        """Kubeconfig (explicit, $KUBECONFIG, ~/.kube/config) or, failing that, the in-cluster account."""
        configuration = aio_client.Configuration()
        try:
            await aio_config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        except Exception:
            if kubeconfig or context:
                raise
            aio_config.load_incluster_config(client_configuration=configuration)
        _settle_proxy(configuration)
        return cls(aio_client.ApiClient(configuration))

    @property
    def host(self) -> str:
        return str(self._client.configuration.host)

    async def close(self) -> None:
        self._closed = True
        await self._client.close()

    async def request_text(self, path: str, query: dict[str, Any] | None = None) -> str:
        """A GET whose answer is text (pod logs)."""
        params = {k: v for k, v in (query or {}).items() if v is not None}
        url = self._client.configuration.host + path + (f"?{urlencode(params)}" if params else "")
        headers = {**self._client.default_headers, "Accept": "text/plain, */*"}
        await self._client.update_params_for_auth(headers, [], ["BearerToken"], path, "GET", None)
        response, raw = await self._send("GET", path, url, headers)
        if response.status >= 400:
            try:
                data = json.loads(raw)
            except ValueError:
                data = {}
            data = data if isinstance(data, dict) else {}
            raise ApiError(response.status, str(data.get("reason") or response.status), str(data.get("message") or ""))
        return raw.decode(errors="replace")

    async def _send(
        self, method: str, path: str, url: str, headers: dict[str, str], body: Any = None
    ) -> tuple[Any, bytes]:
        """The response and its bytes; a throttled request (429 with Retry-After) sent again after the wait asked
        for, up to THROTTLED_ATTEMPTS in all."""
        for attempt in range(1, THROTTLED_ATTEMPTS + 1):
            self.requests += 1
            try:
                response = await self._client.rest_client.request(
                    method, url, headers=headers, body=body, _request_timeout=self._timeout
                )
                raw = await response.read()
            except (TimeoutError, aiohttp.ClientError, OSError, AssertionError) as error:
                # AssertionError: aiohttp asserts on a connection closed under an in-flight request (shutdown).
                raise ApiError(0, "Unreachable", f"{method} {path}: {error!r}") from error
            wait = _retry_after(response.status, response.headers)
            if wait is None or attempt == THROTTLED_ATTEMPTS or self._closed:
                break
            await asyncio.sleep(wait)
        return response, raw

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        if self._closed:
            raise ApiError(0, "Closed", f"{method} {path}: the client is closed (the operator is stopping)")
        params = {k: v for k, v in (query or {}).items() if v is not None}
        url = self._client.configuration.host + path + (f"?{urlencode(params)}" if params else "")
        headers = {**self._client.default_headers, "Content-Type": content_type, "Accept": "application/json"}
        await self._client.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
        response, raw = await self._send(method, path, url, headers, body)
        status = response.status
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"message": raw.decode(errors="replace")[:500]}
        if status >= 400:
            data = data if isinstance(data, dict) else {}
            raise ApiError(status, str(data.get("reason") or status), str(data.get("message") or ""), data)
        return data if isinstance(data, dict) else {"items": data}

    # ------------------------------------------------------------ verbs

    async def get(
        self, res: Resource, namespace: str | None, name: str, *, subresource: str | None = None
    ) -> dict[str, Any]:
        return await self.request("GET", res.path(namespace, name, subresource))

    async def get_or_none(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self.get(res, namespace, name)
        except ApiError as error:
            if error.not_found:
                return None
            raise

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        data = await self.request(
            "GET",
            res.path(namespace),
            query={"labelSelector": label_selector, "fieldSelector": field_selector},
        )
        return list(data.get("items") or [])

    async def list_if_served(
        self, res: Resource, namespace: str | None = None, *, recheck_seconds: float = 300.0
    ) -> Objects:
        """List an optional API (one that may not be installed); remembered as absent for a while.

        While nobody knows yet whether it is served, one caller asks and the others wait for its answer,
        so a hundred simultaneous drains do not send a hundred lists to a missing API.
        """
        key = f"{res.group}/{res.version}/{res.plural}"
        if self._absent.get(key, 0.0) > time.monotonic():
            return []
        probe = self._probes.get(key)
        if probe is not None:
            await asyncio.shield(probe)
            if self._absent.get(key, 0.0) > time.monotonic():
                return []
            return await self.list(res, namespace)
        probe = self._probes[key] = asyncio.get_running_loop().create_future()
        try:
            return await self.list(res, namespace)
        except ApiError as error:
            if not error.not_found:
                raise
            self._absent[key] = time.monotonic() + recheck_seconds
            return []
        finally:
            probe.set_result(None)
            del self._probes[key]

    async def create(self, res: Resource, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", res.path(namespace), body=body, query={"fieldManager": FIELD_MANAGER})

    async def create_or_get(
        self, res: Resource, namespace: str | None, body: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Create; when it already exists (a deterministic name: an earlier pass made it), read it instead."""
        try:
            return await self.create(res, namespace, body), True
        except ApiError as error:
            if not error.already_exists:
                raise
        return await self.get(res, namespace, body["metadata"]["name"]), False

    async def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH",
            res.path(namespace, name, subresource),
            body=body,
            query={"fieldManager": FIELD_MANAGER},
            content_type=CONTENT_TYPES[patch_type],
        )

    async def replace(self, res: Resource, namespace: str | None, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PUT", res.path(namespace, name), body=body, query={"fieldManager": FIELD_MANAGER})

    async def delete(self, res: Resource, namespace: str | None, name: str) -> bool:
        """Delete; False when it was already gone."""
        try:
            await self.request("DELETE", res.path(namespace, name))
        except ApiError as error:
            if error.not_found:
                return False
            raise
        return True
