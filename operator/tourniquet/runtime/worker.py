"""The agent process: stop taking work on SIGTERM, and wire the whole runtime from the environment.

When the operator drains an agent it scales the consumers to zero, and each pod gets SIGTERM and its
termination grace period (30 s by default) before SIGKILL. The consumer loop should then stop pulling
new work and finish the task in hand::

    stop = install_sigterm_handler()
    while stop.should_take_work():
        message = queue.pull(timeout=1)
        if message:
            handle(message)          # finishes even if SIGTERM arrives meanwhile

:meth:`Runtime.from_env` builds everything an agent needs from its environment:

=================================== ========================================================
``TOURNIQUET_AGENT``                 the AgentDeployment's name (required)
``TOURNIQUET_NAMESPACE``             its namespace (default: the pod's, from the service account)
``TOURNIQUET_LEDGER``                the ledger: a SQLite file (default
                                     ``/var/lib/tourniquet/ledger.db``) or a ``postgresql://`` URL
``TOURNIQUET_LEDGER_URL_FILE``       a file holding the ledger's URL (a mounted Secret); wins over
                                     ``TOURNIQUET_LEDGER``
``TOURNIQUET_METRICS_PORT``          where ``/metrics`` is served (default 9464; ``off`` to not serve)
``TOURNIQUET_KUBECONFIG``            a kubeconfig for the control watch (default: in-cluster; outside a
                                     pod, ``KUBECONFIG`` is used too)
``TOURNIQUET_CONTROL_DIR``           the mounted control ConfigMap (default ``/etc/tourniquet/control``)
``TOURNIQUET_BUNDLE``                the mounted bundle (default ``/etc/tourniquet/bundle/bundle.json``),
                                     read for each tool's ``sideEffects`` and hashed: each action
                                     records the bundle's content hash
``TOURNIQUET_BUNDLE_REVISION``       the bundle revision running (recorded on each action)
``TOURNIQUET_TRACE_RETENTION_DAYS``  how long decision traces are kept (default 30)
``TOURNIQUET_TRACE_LIMIT_BYTES``     the size limit of each part of a trace (default 16384)
``TOURNIQUET_ACK_SECONDS``           how often the applied control flag is reported back besides every
                                     change (default 300; ``off`` to not report; see
                                     ``tourniquet.runtime.ack``)
``TOURNIQUET_POD``                   the pod's name for that report (default ``HOSTNAME``)
=================================== ========================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIServer

from tourniquet.runtime.ack import Acknowledger, acknowledger_from_env
from tourniquet.runtime.compensate import Compensator, compensator
from tourniquet.runtime.control import CONTROL_MOUNT, ControlFollower, ControlSource, ControlState
from tourniquet.runtime.guard import AmountSpec, Guard, P, R, Skipped
from tourniquet.runtime.ledger import (
    Ledger,
    LedgerError,
    canonical_json,
    ledger_target_from_env,
    open_ledger,
    redacted_url,
)
from tourniquet.runtime.metrics import AgentMetrics, serve_metrics
from tourniquet.runtime.trace import DEFAULT_PART_LIMIT, DEFAULT_RETENTION, TaskTrace, TraceRetention

log = logging.getLogger(__name__)

BUNDLE_FILE = "/etc/tourniquet/bundle/bundle.json"
DEFAULT_METRICS_PORT = 9464
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class ConfigurationError(ValueError):
    """The runtime's environment is incomplete or wrong; the message names the variable to fix."""


class StopToken:
    """Says whether the agent should take more work; set once on SIGTERM (or by :meth:`request_stop`)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop taking new work (the task in hand finishes). Safe to call from a signal handler."""
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def should_take_work(self) -> bool:
        """Check this before pulling each new unit of work."""
        return not self._event.is_set()

    @property
    def stopping(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking at once on a stop; True if a stop was requested."""
        return self._event.wait(timeout)


def install_sigterm_handler(
    token: StopToken | None = None, *, signals: Iterable[signal.Signals] = (signal.SIGTERM,)
) -> StopToken:
    """Make SIGTERM stop the agent from taking new work instead of killing it mid-task.

    Call it from the main thread at startup. A handler installed earlier by someone else is still
    called after ours. Returns the token to poll with ``should_take_work()``.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "install_sigterm_handler() must run in the main thread (Python delivers signals there); "
            "call it at startup, before starting worker threads"
        )
    stop = token if token is not None else StopToken()
    for sig in signals:
        previous = signal.getsignal(sig)

        def handler(
            signum: int,
            frame: FrameType | None,
            previous: Callable[[int, FrameType | None], Any] | int | None = previous,
        ) -> None:
            # No logging here: a signal handler may interrupt a logging call holding its lock.
            stop.request_stop(f"received {signal.Signals(signum).name}")
            if callable(previous) and previous is not signal.default_int_handler:
                previous(signum, frame)

        signal.signal(sig, handler)
    return stop


class BundleError(ValueError):
    """The mounted bundle cannot be read."""


def load_bundle_tools(path: str | Path = BUNDLE_FILE) -> dict[str, str]:
    """Each tool's side effects (``write`` or ``read``) from a mounted bundle; empty when none is mounted."""
    bundle_path = Path(path)
    if not bundle_path.exists():
        log.warning("No bundle at %s: every tool is treated as a write tool", bundle_path)
        return {}
    try:
        bundle = json.loads(bundle_path.read_text(encoding="utf-8"))
        tools = bundle.get("tools") or []
        return {str(t["name"]): str(t.get("sideEffects") or "write") for t in tools}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BundleError(f"cannot read the tools of the bundle {bundle_path}: {type(exc).__name__}: {exc}") from exc


def bundle_hash(path: str | Path = BUNDLE_FILE) -> str | None:
    """The sha256 of a mounted bundle's content, as the operator labels its revision (None without one)."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def _positive_int(environ: Mapping[str, str], key: str, default: int | None) -> int | None:
    raw = environ.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigurationError(f"{key} must be a whole number of 1 or more, not {raw!r}")
    return value


def _namespace(environ: Mapping[str, str]) -> str:
    namespace = environ.get("TOURNIQUET_NAMESPACE")
    if namespace:
        return namespace
    try:
        return Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip()
    except OSError:
        raise ConfigurationError(
            "TOURNIQUET_NAMESPACE is not set and there is no service account namespace to fall back on: "
            "set it to the AgentDeployment's namespace"
        ) from None


def _metrics_port(environ: Mapping[str, str]) -> int | None:
    raw = environ.get("TOURNIQUET_METRICS_PORT", str(DEFAULT_METRICS_PORT)).strip()
    if raw.lower() in ("off", "none", "false", ""):
        return None
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"TOURNIQUET_METRICS_PORT must be a port number (or off), not {raw!r}")
    return port


def _kubeconfig(environ: Mapping[str, str]) -> str | None:
    if environ.get("TOURNIQUET_KUBECONFIG"):
        return environ["TOURNIQUET_KUBECONFIG"]
    if not environ.get("KUBERNETES_SERVICE_HOST") and environ.get("KUBECONFIG"):
        return environ["KUBECONFIG"].split(os.pathsep)[0]
    return None


class Runtime:
    """Everything an agent needs, wired: the control follower, the guard, the ledger, metrics, the stop token."""

    def __init__(
        self,
        *,
        agent: str,
        namespace: str,
        control: ControlSource,
        guard: Guard,
        ledger: Ledger | None,
        metrics: AgentMetrics,
        stop: StopToken,
        metrics_server: WSGIServer | None = None,
        retention: TraceRetention | None = None,
    ) -> None:
        self.agent = agent
        self.namespace = namespace
        self.control = control
        self.guard = guard
        self.ledger = ledger
        self.metrics = metrics
        self.stop = stop
        self.metrics_server = metrics_server
        self.retention = retention
        self.ack: Acknowledger | None = None  # reports the applied control flag back (runtime.ack)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        install_signal_handler: bool = True,
        start: bool = True,
    ) -> Runtime:
        """Build the runtime from ``TOURNIQUET_*`` variables (see the module docstring) and start following.

        ``install_signal_handler=False`` when not in the main thread (then call ``runtime.stop.request_stop()``
        yourself); ``start=False`` to build without starting the watch or serving metrics.
        """
        env = os.environ if environ is None else environ
        agent = env.get("TOURNIQUET_AGENT", "").strip()
        if not agent:
            raise ConfigurationError("TOURNIQUET_AGENT is not set: set it to the AgentDeployment's name")
        namespace = _namespace(env)
        port = _metrics_port(env)
        tools = load_bundle_tools(env.get("TOURNIQUET_BUNDLE", BUNDLE_FILE))
        metrics = AgentMetrics(agent)
        ack = acknowledger_from_env(env, agent, namespace, _kubeconfig(env))  # the kill switch, reported back

        def on_control(state: ControlState) -> None:
            metrics.observe_control(state.shadow, state.revoked_tools)
            if ack is not None:
                ack.report(state)

        follower = ControlFollower(
            agent,
            namespace,
            kubeconfig=_kubeconfig(env),
            mount_dir=env.get("TOURNIQUET_CONTROL_DIR", CONTROL_MOUNT),
            on_change=on_control,
        )
        bundle_file = env.get("TOURNIQUET_BUNDLE", BUNDLE_FILE)
        revision = _positive_int(env, "TOURNIQUET_BUNDLE_REVISION", None)
        retention_days = _positive_int(env, "TOURNIQUET_TRACE_RETENTION_DAYS", DEFAULT_RETENTION.days)
        trace_limit = _positive_int(env, "TOURNIQUET_TRACE_LIMIT_BYTES", DEFAULT_PART_LIMIT)
        try:
            ledger_target = ledger_target_from_env(env)
        except LedgerError as exc:
            raise ConfigurationError(str(exc)) from exc
        try:
            ledger = open_ledger(ledger_target)
        except (OSError, sqlite3.Error, LedgerError) as exc:
            raise ConfigurationError(
                f"cannot open the ledger {redacted_url(ledger_target)} ({exc}): set TOURNIQUET_LEDGER to a "
                "writable path (e.g. on a mounted volume) or to a reachable postgresql:// URL"
            ) from exc
        guard = Guard(
            follower,
            ledger,
            metrics,
            agent=agent,
            tools=tools,
            bundle_revision=revision,
            bundle_hash=bundle_hash(bundle_file),
            trace_limit=trace_limit or DEFAULT_PART_LIMIT,
        )
        stop = install_sigterm_handler() if install_signal_handler else StopToken()
        retention = TraceRetention(ledger, timedelta(days=retention_days or DEFAULT_RETENTION.days))
        server = None
        if start:
            if ack is not None:
                ack.start()
            follower.start()
            retention.start()
            if port is not None:
                server, _ = serve_metrics(port, registry=metrics)
        runtime = cls(
            agent=agent,
            namespace=namespace,
            control=follower,
            guard=guard,
            ledger=ledger,
            metrics=metrics,
            stop=stop,
            metrics_server=server,
            retention=retention,
        )
        runtime.ack = ack
        log.info(
            "Started the Tourniquet runtime for %s/%s: %s; %d tools from the bundle; ledger %s; metrics %s",
            namespace,
            agent,
            follower.state().describe(),
            len(tools),
            redacted_url(ledger_target),
            f"on :{server.server_port}" if server else "not served",
        )
        return runtime

    # Shortcuts to the parts an agent's code uses most.

    def should_take_work(self) -> bool:
        return self.stop.should_take_work()

    def task(self, name: str, task_id: str | None = None) -> AbstractContextManager[TaskTrace]:
        return self.guard.task(name, task_id)

    def call(self, tool: str, args: Mapping[str, Any], fn: Callable[..., Any], **options: Any) -> Any | Skipped:
        return self.guard.call(tool, args, fn, **options)

    def tool(
        self,
        name: str | None = None,
        *,
        subjects: Callable[[dict[str, Any]], Iterable[str]] | None = None,
        amount: AmountSpec = None,
        amount_unit: str | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R | Skipped]]:
        """The guard's tool decorator: ``@runtime.tool("issue_refund")``."""
        return self.guard.tool(name, subjects=subjects, amount=amount, amount_unit=amount_unit)

    def compensator(self, tool: str) -> Callable[[Compensator], Compensator]:
        """Register how ``tool``'s actions are undone: ``@runtime.compensator("issue_refund")``. The
        compensation worker (``python -m tourniquet.runtime.compensate``) calls it with the original action;
        see :mod:`tourniquet.runtime.compensate`."""
        return compensator(tool)

    def close(self) -> None:
        """Stop following, stop serving metrics, close the ledger."""
        if isinstance(self.control, ControlFollower):
            self.control.stop()
        if self.ack is not None:
            self.ack.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        if self.retention is not None:
            self.retention.stop()
        if self.ledger is not None:
            self.ledger.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def iter_work(stop: StopToken, pull: Callable[[], Any | None], *, idle_seconds: float = 1.0) -> Iterator[Any]:
    """Yield units of work from ``pull()`` until a stop is requested; ``None`` from ``pull`` means idle."""
    while stop.should_take_work():
        item = pull()
        if item is None:
            stop.wait(idle_seconds)
            continue
        yield item
    log.info("Stopped taking work: %s", stop.reason)
