"""The operator's HTTP endpoint: the Alertmanager webhook receiver and the operator's /metrics.

* ``POST /alertmanager`` — an Alertmanager webhook notification (``Authorization: Bearer <token>``).
  Alerts carrying an ``agent`` label (and optionally ``namespace``, ``severity`` SEV1-3, ``class``) open
  or update incidents, de-duplicated by namespace + agent + alertname; a resolved alert is recorded on the
  open incident and never resolves it. Answers 200 with one outcome per alert; 401 (no or wrong token, or
  no token configured), 400 (not a notification, or no alert could be mapped), 422 (no alert could be
  mapped, and one names a namespace the operator does not watch), 503 (the Kubernetes API failed:
  Alertmanager retries). Alertmanager does not retry a 4xx.
* ``GET /metrics`` — the operator's metrics (:mod:`tourniquet.observability`), unauthenticated as usual.
* ``GET /healthz`` — 200 once serving.

Alertmanager configuration::

    receivers:
      - name: tourniquet
        webhook_configs:
          - url: http://tourniquet.tourniquet-system:9090/alertmanager
            http_config:
              authorization: {credentials_file: /etc/alertmanager/tourniquet-token}
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from tourniquet import observability
from tourniquet.adapters.kube import ApiError, KubeApi
from tourniquet.domain.detection import PayloadError, parse_notification
from tourniquet.reconcilers.lane import Lane
from tourniquet.reconcilers.queue import Hold, unshared
from tourniquet.reconcilers.signals import receive_alerts

log = logging.getLogger(__name__)

ENV_PORT = "TOURNIQUET_HTTP_PORT"
ENV_HOST = "TOURNIQUET_HTTP_HOST"
ENV_TOKEN = "TOURNIQUET_RECEIVER_TOKEN"
ENV_TOKEN_FILE = "TOURNIQUET_RECEIVER_TOKEN_FILE"
DEFAULT_PORT = 9090
MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class TokenSource:
    """The receiver's bearer token: a value, or a file read on every request (so it can be rotated)."""

    value: str | None = None
    path: Path | None = None

    @classmethod
    def from_env(cls) -> TokenSource:
        path = os.environ.get(ENV_TOKEN_FILE)
        return cls(os.environ.get(ENV_TOKEN) or None, Path(path) if path else None)

    def current(self) -> str | None:
        if self.value:
            return self.value
        if self.path is not None:
            try:
                return self.path.read_text().strip() or None
            except OSError as error:
                log.error("Could not read the receiver token file %s: %s", self.path, error)
        return None


def _json_error(status: int, reason: str) -> web.Response:
    return web.json_response({"status": "refused", "reason": reason}, status=status)


class Receiver:
    """The aiohttp application, started and stopped with the operator."""

    def __init__(
        self,
        api: Callable[[], KubeApi | None],
        token: TokenSource,
        served: Sequence[str] | None = None,
        hold: Callable[[], Hold | None] = lambda: unshared,
        lane: Lane | None = None,
        metrics: observability.OperatorMetrics | None = None,
    ) -> None:
        """`served`: the namespaces the operator watches (its `--namespace` values); None: every one. `hold`: the
        incidents' work queue's (None while the operator is starting). `lane`: the operator's background lane.
        `metrics`: what /metrics serves (the operator's)."""
        self._api = api
        self._hold = hold
        self._lane = lane or Lane()
        self._metrics = metrics or observability.OperatorMetrics()
        self._token = token
        self._served = tuple(served) if served else None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        self.app.router.add_post("/alertmanager", self.alertmanager)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/healthz", self.healthz)

    async def start(self, host: str, port: int) -> int:
        """Serve on host:port (0: any free port); returns the port."""
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.exposition(), headers={"Content-Type": observability.CONTENT_TYPE})

    async def alertmanager(self, request: web.Request) -> web.Response:
        expected = self._token.current()
        if expected is None:
            return _json_error(
                401, f"the receiver has no token configured: set {ENV_TOKEN} or {ENV_TOKEN_FILE} on the operator"
            )
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return _json_error(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode(), expected.encode()):
            return _json_error(401, "wrong bearer token")
        try:
            payload = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as error:
            return _json_error(400, f"the body is not JSON: {error}")
        now = datetime.now(UTC)
        try:
            notification = parse_notification(payload, now)
        except PayloadError as error:
            return _json_error(400, str(error))
        api, hold = self._api(), self._hold()
        if api is None or hold is None:
            return _json_error(503, "the operator is still starting; retry")
        try:
            outcomes = await receive_alerts(api, notification, now=now, served=self._served, hold=hold, lane=self._lane)
        except ApiError as error:
            log.warning("Could not handle an Alertmanager notification: Kubernetes API: %s", error)
            return _json_error(503, f"Kubernetes API: {error}")
        for refused in (o for o in outcomes if o.outcome == "refused"):
            name = refused.alertname or f"#{refused.index}"
            log.warning("Refused alert %s from Alertmanager: %s", name, refused.reason)
        body = {"status": "ok", "alerts": [o.to_json() for o in outcomes]}
        if outcomes and all(o.outcome == "refused" for o in outcomes):
            reasons = "; ".join(f"alerts[{o.index}] {o.alertname}: {o.reason}" for o in outcomes)
            refusal = {**body, "status": "refused", "reason": f"no alert could be mapped: {reasons}"}
            # 422 when an agent is in a namespace this operator does not watch: a retry would not help.
            return web.json_response(refusal, status=422 if any(o.unwatched for o in outcomes) else 400)
        return web.json_response(body)


def listen_address() -> tuple[str, int]:
    """Host and port from the environment (TOURNIQUET_HTTP_HOST, TOURNIQUET_HTTP_PORT; default 0.0.0.0:9090)."""
    raw = os.environ.get(ENV_PORT) or str(DEFAULT_PORT)
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_PORT}={raw!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{ENV_PORT}={raw!r} is out of range 0-65535")
    return os.environ.get(ENV_HOST) or "0.0.0.0", port
