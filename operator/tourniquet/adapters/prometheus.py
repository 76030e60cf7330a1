"""Prometheus, through prometheus-api-client: instant and range queries, and the one mapping of its failures.

prometheus-api-client is synchronous (requests); queries run on a small thread pool of their own so
the operator's event loop never blocks on Prometheus. Failures are sorted once, here:

* :class:`QueryRejected` — Prometheus refused the expression itself (HTTP 400 bad_data, 422 execution):
  that rule is wrong, the others are unaffected;
* :class:`PrometheusUnavailable` — unreachable, too slow, failing (5xx), refusing our credentials, or not
  answering as Prometheus: no verdict can be drawn from it, for any rule.

When Prometheus does not answer at all (unreachable, or no answer within the timeout), the queries of the
next `timeout_seconds` fail at once with the same error instead of each waiting for its own timeout: a
thousand agents learn that detection is degraded in one timeout, not in a queue of them.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

ENV_URL = "TOURNIQUET_PROMETHEUS_URL"
ENV_TIMEOUT = "TOURNIQUET_PROMETHEUS_TIMEOUT_SECONDS"
ENV_TOKEN_FILE = "TOURNIQUET_PROMETHEUS_TOKEN_FILE"
ENV_INSECURE = "TOURNIQUET_PROMETHEUS_INSECURE"
ENV_WORKERS = "TOURNIQUET_PROMETHEUS_CONCURRENCY"

# Prometheus gives no answer at all: fail the queries that follow at once, for one timeout.
SILENT = ("PrometheusUnreachable", "PrometheusTimeout")
_STATUS_MESSAGE = re.compile(r"^HTTP Status Code (\d+) \((.*)\)$", re.DOTALL)


class PrometheusError(Exception):
    """A query that produced no answer."""


class QueryRejected(PrometheusError):
    """Prometheus refused this expression (bad PromQL, or one it cannot execute)."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(f"Prometheus rejected the query ({status} {error_type}): {message}")
        self.status = status
        self.error_type = error_type
        self.message = message


class PrometheusUnavailable(PrometheusError):
    """No verdict can be drawn: Prometheus is unreachable, slow, failing or not answering as Prometheus."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # CamelCase: PrometheusUnreachable | PrometheusTimeout | PrometheusError | ...
        self.message = message


@dataclass(frozen=True)
class PrometheusSettings:
    url: str
    timeout_seconds: float = 5.0
    token: str | None = None
    insecure: bool = False
    concurrency: int = 4

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PrometheusSettings | None:
        """The settings from the environment; None when TOURNIQUET_PROMETHEUS_URL is unset (detection off)."""
        env = os.environ if environ is None else environ
        url = (env.get(ENV_URL) or "").strip().rstrip("/")
        if not url:
            return None
        if not re.match(r"^https?://[^/]+", url):
            raise ValueError(f"{ENV_URL}={url!r} is not an http(s) URL such as http://prometheus:9090")
        token_file = env.get(ENV_TOKEN_FILE)
        token = Path(token_file).read_text().strip() if token_file else None
        return cls(
            url=url,
            timeout_seconds=_positive(env, ENV_TIMEOUT, 5.0),
            token=token or None,
            insecure=(env.get(ENV_INSECURE) or "").lower() in ("1", "true", "yes"),
            concurrency=int(_positive(env, ENV_WORKERS, 4)),
        )


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be greater than 0")
    return value


class PrometheusQuerier:
    """Instant queries against one Prometheus. Create once; `close()` when done."""

    def __init__(self, settings: PrometheusSettings) -> None:
        self.settings = settings
        self.url = settings.url
        # Nothing is retried here (the next evaluation interval is the retry), and a read timeout stays a
        # timeout rather than becoming a "max retries exceeded" connection error.
        retry = Retry(total=0, read=False, raise_on_status=False)
        session = requests.Session()
        headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else None
        self._client = PrometheusConnect(
            settings.url,
            headers=headers,
            disable_ssl=settings.insecure,
            retry=retry,
            session=session,
            timeout=settings.timeout_seconds,
        )
        # A pool as large as the thread pool, on the longer (so preferred) prefix of the query API.
        session.mount(
            f"{settings.url}/api/",
            HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=settings.concurrency),
        )
        self._executor = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="tourniquet-prom")
        self._closed = False
        self._silent: tuple[float, PrometheusUnavailable] | None = None  # (until, the error) while not answering
        self._silent_lock = threading.Lock()

    async def query(self, expr: str, *, at: float | None = None) -> Any:
        """The `result` of an instant query (at `at`, a Unix time, or now); raises a PrometheusError."""
        if self._closed:
            raise PrometheusUnavailable(
                "PrometheusClientClosed", "the Prometheus client is closed (the operator is stopping)"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._query, expr, at)

    async def query_range(self, expr: str, start: datetime, end: datetime, step_seconds: int = 1) -> Any:
        """The `result` (a matrix) of a range query from `start` to `end` (whole seconds) every `step_seconds`."""
        if self._closed:
            raise PrometheusUnavailable(
                "PrometheusClientClosed", "the Prometheus client is closed (the operator is stopping)"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._guarded, lambda: self._request_range(expr, start, end, step_seconds)
        )

    def _query(self, expr: str, at: float | None) -> Any:
        return self._guarded(lambda: self._request(expr, at))

    def _guarded(self, request: Callable[[], Any]) -> Any:
        with self._silent_lock:
            if self._silent is not None:
                until, error = self._silent
                if time.monotonic() < until:
                    raise PrometheusUnavailable(error.reason, error.message)
                self._silent = None
        try:
            return request()
        except PrometheusUnavailable as error:
            if error.reason in SILENT:
                with self._silent_lock:
                    self._silent = (time.monotonic() + self.settings.timeout_seconds, error)
            raise

    def _request(self, expr: str, at: float | None) -> Any:
        # Prometheus stops evaluating at its own timeout too, so a slow query does not keep running there.
        params: dict[str, Any] = {"timeout": f"{self.settings.timeout_seconds:g}s"}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._answer(lambda: self._client.custom_query(expr, params=params))

    def _request_range(self, expr: str, start: datetime, end: datetime, step_seconds: int) -> Any:
        params: dict[str, Any] = {"timeout": f"{self.settings.timeout_seconds:g}s"}
        return self._answer(lambda: self._client.custom_query_range(expr, start, end, str(step_seconds), params=params))

    def _answer(self, call: Callable[[], Any]) -> Any:
        """The query's answer, or its failure sorted into QueryRejected or PrometheusUnavailable."""
        try:
            return call()
        except requests.exceptions.JSONDecodeError as error:  # a 200 that is not a Prometheus API answer
            raise PrometheusUnavailable(
                "PrometheusBadResponse", f"{self.url} did not answer as the Prometheus query API: {error}"
            ) from None
        except requests.exceptions.Timeout:
            raise PrometheusUnavailable(
                "PrometheusTimeout",
                f"Prometheus at {self.url} did not answer within {self.settings.timeout_seconds:g}s",
            ) from None
        except requests.exceptions.ConnectionError as error:
            raise PrometheusUnavailable(
                "PrometheusUnreachable", f"Prometheus at {self.url} is unreachable: {_cause(error)}"
            ) from None
        except requests.exceptions.RequestException as error:
            raise PrometheusUnavailable("PrometheusUnreachable", f"Prometheus at {self.url}: {_cause(error)}") from None
        except PrometheusApiClientException as error:
            raise self._classify(str(error)) from None
        except (ValueError, KeyError, TypeError) as error:  # a 200 that is not a Prometheus API answer
            raise PrometheusUnavailable(
                "PrometheusBadResponse", f"{self.url} did not answer as the Prometheus query API: {error}"
            ) from None

    def _classify(self, text: str) -> PrometheusError:
        status, error_type, message = _parse_error(text)
        if status in (400, 422):
            return QueryRejected(status, error_type or "bad_data", message)
        if status in (401, 403):
            return PrometheusUnavailable(
                "PrometheusUnauthorized", f"Prometheus at {self.url} refused the operator's credentials ({status})"
            )
        if status in (503, 504) and error_type == "timeout":
            return PrometheusUnavailable(
                "PrometheusQueryTimeout", f"Prometheus at {self.url} timed out evaluating a rule: {message}"
            )
        return PrometheusUnavailable(
            "PrometheusError", f"Prometheus at {self.url} answered {status or 'an error'}: {message}"[:500]
        )

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()


def _parse_error(text: str) -> tuple[int, str, str]:
    """(status, errorType, error) out of prometheus-api-client's 'HTTP Status Code 400 (b'{...}')'."""
    match = _STATUS_MESSAGE.match(text)
    if not match:
        return 0, "", text[:300]
    status = int(match.group(1))
    try:
        raw = ast.literal_eval(match.group(2))
        body = json.loads(raw.decode(errors="replace") if isinstance(raw, bytes) else raw)
    except (ValueError, SyntaxError, TypeError):
        return status, "", match.group(2)[:300]
    if not isinstance(body, dict):
        return status, "", str(body)[:300]
    return status, str(body.get("errorType") or ""), str(body.get("error") or "")[:500]


def _cause(error: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, shortly: 'Connection refused'."""
    text = str(error)
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"(Read timed out)", r"(Remote end closed connection[^')]*)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip()
    return text[:200]
