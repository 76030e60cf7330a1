"""Detection handlers: one evaluation daemon per AgentDeployment, the HTTP endpoint, the open-incident gauge.

Settings, read once at start-up:

* ``TOURNIQUET_PROMETHEUS_URL`` — where rules are evaluated; unset: detection is off (and every agent with
  rules says so in its DetectionDegraded condition). ``TOURNIQUET_PROMETHEUS_TIMEOUT_SECONDS`` (5),
  ``TOURNIQUET_PROMETHEUS_TOKEN_FILE``, ``TOURNIQUET_PROMETHEUS_INSECURE``,
  ``TOURNIQUET_PROMETHEUS_CONCURRENCY`` (4 queries at once).
* ``TOURNIQUET_HTTP_PORT`` (9090), ``TOURNIQUET_HTTP_HOST`` (0.0.0.0) — the Alertmanager receiver and
  /metrics; ``TOURNIQUET_RECEIVER_TOKEN`` or ``TOURNIQUET_RECEIVER_TOKEN_FILE`` — its bearer token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

import kopf

from tourniquet.adapters.kube import ApiError
from tourniquet.adapters.prometheus import PrometheusQuerier, PrometheusSettings
from tourniquet.handlers.agentdeployments import RESOURCE
from tourniquet.receiver import Receiver, TokenSource, listen_address
from tourniquet.reconcilers.detection import DEFAULT_INTERVAL_SECONDS, AgentDetector, interval_seconds

log = logging.getLogger(__name__)


@kopf.on.startup()
async def start_detection(memo: Any, logger: kopf.Logger, **_: Any) -> None:
    memo.prometheus = None
    memo.detection_off = None
    try:
        settings = PrometheusSettings.from_env()
    except (ValueError, OSError) as error:
        memo.detection_off = f"the Prometheus settings are invalid: {error}"
        logger.error("Detection is off: %s", memo.detection_off)
        settings = None
    if settings is not None:
        memo.prometheus = PrometheusQuerier(settings)
        logger.info("Evaluating detection rules against Prometheus at %s", settings.url)
    elif memo.detection_off is None:
        logger.warning(
            "Detection is off: TOURNIQUET_PROMETHEUS_URL is not set (the Alertmanager receiver still works)"
        )

    served = getattr(memo, "served_namespaces", None)  # `tourniquet run -n`; `kopf run` does not say
    memo.receiver = Receiver(
        lambda: getattr(memo, "api", None),
        TokenSource.from_env(),
        served,
        hold=lambda: memo.incidents.queue.holding if hasattr(memo, "incidents") else None,
        lane=memo.lane,
        metrics=memo.metrics,
    )
    try:
        host, port = listen_address()
        bound = await memo.receiver.start(host, port)
    except (ValueError, OSError) as error:
        # Containment must not depend on this endpoint: run without it, loudly.
        logger.error("Not serving /alertmanager and /metrics: %s", error)
    else:
        logger.info("Serving /alertmanager and /metrics on %s:%d", host, bound)


@kopf.on.cleanup()
async def stop_detection(memo: Any, **_: Any) -> None:
    receiver = getattr(memo, "receiver", None)
    if receiver is not None:
        await receiver.stop()
    prometheus = getattr(memo, "prometheus", None)
    if prometheus is not None:
        prometheus.close()


def _detection_snapshot(body: kopf.Body) -> dict[str, Any]:
    """What a detection pass reads: the rules and what the status says about them (not the whole agent,
    whose bundle and history a thousand daemons would otherwise copy every interval)."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    meta = body["metadata"]
    picked = {
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "generation": meta.get("generation")},
        "spec": {"detection": spec.get("detection")} if "detection" in spec else {},
        "status": {k: status[k] for k in ("detection", "conditions") if k in status},
    }
    copied: dict[str, Any] = json.loads(json.dumps(picked))
    return copied


@kopf.daemon(*RESOURCE, id="detection", cancellation_timeout=5.0)
async def detect(body: kopf.Body, memo: Any, logger: kopf.Logger, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Evaluate this agent's rules every spec.detection.intervalSeconds, until the agent goes away."""
    meta = body["metadata"]
    detector = AgentDetector(
        memo.api,
        memo.prometheus,
        meta["namespace"],
        meta["name"],
        off_reason=getattr(memo, "detection_off", None),
        holds=(memo.agents.queue.holding, memo.incidents.queue.holding),
        lane=memo.lane,
    )
    loop = asyncio.get_running_loop()
    # Spread the first passes over one interval, so a thousand agents do not query at the same instant.
    first = interval_seconds((body.get("spec") or {}).get("detection") or {})
    await stopped.wait(random.uniform(0, min(first, DEFAULT_INTERVAL_SECONDS)))
    degraded: str | None = None
    while not stopped:
        started = loop.time()
        snapshot = _detection_snapshot(body)
        interval = interval_seconds((snapshot.get("spec") or {}).get("detection"))
        try:
            report = await detector.evaluate(snapshot)
        except ApiError as error:
            log.warning("Detection pass on %s/%s failed: Kubernetes API: %s", meta["namespace"], meta["name"], error)
        except Exception:
            log.exception("Detection pass on %s/%s failed", meta["namespace"], meta["name"])
        else:
            now_degraded = report.degraded.message if report.degraded else None
            if now_degraded != degraded and report.rules:
                if now_degraded:
                    logger.warning("Detection degraded: %s", now_degraded)
                else:
                    logger.info("Detection recovered: evaluating %d rule(s)", len(report.rules))
            degraded = now_degraded
        await stopped.wait(max(0.05, interval - (loop.time() - started)))
