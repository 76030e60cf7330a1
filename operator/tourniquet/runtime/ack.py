"""Report back what the runtime applied: the kill switch's acknowledgement, per pod.

The operator can set the control flag; only the agent can say it honours it. Each runtime writes what it last
applied — mode, revoked tools, the control ConfigMap's resourceVersion, when — under its pod's name in the
ConfigMap ``<agent>-control-ack`` (which the operator creates), on every change and every
``TOURNIQUET_ACK_SECONDS`` (300) besides, so a quiet agent still shows it is alive and listening. The operator's
readiness checklist and drills read it. The agent's ServiceAccount needs ``patch`` on that one ConfigMap
(``resourceNames: [<agent>-control-ack]``), never on its own control ConfigMap.

Reporting is best effort and off the tool-call path: it runs in its own thread, and a failure is logged (once
per kind) and retried at the next change or heartbeat.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tourniquet.runtime.control import ControlState
from tourniquet.runtime.control.client import core_v1_api

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_SECONDS = 300.0


def ack_configmap(agent: str) -> str:
    return f"{agent}-control-ack"


def acknowledgement(state: ControlState, now: datetime | None = None) -> dict[str, Any]:
    """What one pod reports: the flag it applies, where it read it, and when."""
    return {
        "mode": state.mode,
        "revokedTools": sorted(state.revoked_tools),
        "source": state.source,
        "resourceVersion": state.resource_version,
        "appliedAt": state.observed_at.astimezone(UTC).isoformat(),
        "reportedAt": (now or datetime.now(UTC)).astimezone(UTC).isoformat(),
        **({"error": state.error} if state.error else {}),
    }


class Acknowledger:
    """Writes this pod's acknowledgement into ``<agent>-control-ack`` from a background thread."""

    def __init__(
        self,
        agent: str,
        namespace: str,
        pod: str,
        *,
        kubeconfig: str | Path | None = None,
        context: str | None = None,
        heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
    ) -> None:
        self.agent = agent
        self.namespace = namespace
        self.pod = pod
        self.configmap = ack_configmap(agent)
        self.kubeconfig = Path(kubeconfig) if kubeconfig else None
        self.context = context
        self.heartbeat_seconds = heartbeat_seconds
        self._latest: ControlState | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._api: Any = None
        self._warned: set[str] = set()
        self.reported = 0  # how many acknowledgements were written (for tests and logs)

    def report(self, state: ControlState) -> None:
        """A new state was applied: acknowledge it soon (never blocks)."""
        if state.source == "default":
            return  # nothing was read yet: nothing to acknowledge
        with self._lock:
            self._latest = state
        self._wake.set()

    def start(self) -> Acknowledger:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name=f"tourniquet-ack-{self.agent}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.heartbeat_seconds)
            self._wake.clear()
            if self._stopping.is_set():
                return
            with self._lock:
                state = self._latest
            if state is not None:
                self._send(state)

    def _send(self, state: ControlState) -> None:
        body = {"data": {self.pod: json.dumps(acknowledgement(state), sort_keys=True)}}
        try:
            self._connect().patch_namespaced_config_map(self.configmap, self.namespace, body)
        except Exception as exc:  # best effort: logged once per kind, retried at the next change or heartbeat
            status = getattr(exc, "status", None)
            kind = str(status or type(exc).__name__)
            if kind not in self._warned:
                self._warned.add(kind)
                hint = {
                    404: f"the ConfigMap {self.configmap} does not exist (the operator creates it)",
                    403: f"grant the agent's ServiceAccount patch on configmaps named {self.configmap}",
                }.get(status or 0, str(exc)[:300])
                log.warning("Could not acknowledge the control flag of %s: %s", self.agent, hint)
            return
        self.reported += 1

    def _connect(self) -> Any:
        if self._api is None:
            self._api = core_v1_api(self.kubeconfig, self.context)
        return self._api


def acknowledger_from_env(environ: Any, agent: str, namespace: str, kubeconfig: str | None) -> Acknowledger | None:
    """``TOURNIQUET_ACK_SECONDS`` (300; ``off`` to not report) and the pod's name (``TOURNIQUET_POD``, else
    ``HOSTNAME``, which Kubernetes sets to it); None when off or when there is no pod name."""
    raw = str(environ.get("TOURNIQUET_ACK_SECONDS", "")).strip().lower()
    if raw in ("off", "none", "false", "0"):
        return None
    try:
        heartbeat = float(raw) if raw else DEFAULT_HEARTBEAT_SECONDS
    except ValueError:
        log.warning("TOURNIQUET_ACK_SECONDS=%r is not a number: reporting every %gs", raw, DEFAULT_HEARTBEAT_SECONDS)
        heartbeat = DEFAULT_HEARTBEAT_SECONDS
    pod = environ.get("TOURNIQUET_POD") or environ.get("HOSTNAME")
    if not pod:
        log.warning("Not acknowledging the control flag: no pod name (TOURNIQUET_POD or HOSTNAME)")
        return None
    return Acknowledger(agent, namespace, pod, kubeconfig=kubeconfig, heartbeat_seconds=max(1.0, heartbeat))
