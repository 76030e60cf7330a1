"""Following the control ConfigMap from a background thread: LIST then WATCH through the API, resumed from the
last resourceVersion, listed again on 410 Gone, reconnected with jittered backoff, and the mounted files polled
meanwhile (never loosening what the API last said on a stale mount)."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tourniquet.domain import names
from tourniquet.runtime.control.client import core_v1_api
from tourniquet.runtime.control.flag import (
    CONTROL_MOUNT,
    SHADOW,
    ControlState,
    parse_control,
    read_mount,
    read_mounted_state,
    stricter,
)

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

# The package's name, as before the follower had a module of its own: agents' log configuration names it.
log = logging.getLogger("tourniquet.runtime.control")


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class _NoApiAccess(Exception):
    """There is no way to reach the API (no configuration, or no permission)."""


@dataclass
class _Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    current: float = 0.0

    def next(self) -> float:
        self.current = min(self.maximum, self.current * 2 if self.current else self.initial)
        return self.current * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.current = 0.0


def _lines(response: Any) -> Iterator[str]:
    """The newline-delimited JSON lines of a streamed watch response, as they arrive."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line.decode("utf-8", errors="replace")
    if buffer.strip():
        yield buffer.decode("utf-8", errors="replace")


def _describe_api_error(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if status in (401, 403):
        return (
            f"no API access ({status} {getattr(exc, 'reason', '')}): the pod's service account needs get, list and "
            "watch on configmaps in its namespace"
        )
    if isinstance(exc, _NoApiAccess):
        return str(exc)
    if status:
        return f"API error {status} {getattr(exc, 'reason', '')}".strip()
    cause = getattr(exc, "reason", None) or exc  # urllib3's MaxRetryError wraps the connection error
    return f"API unreachable: {str(cause)[:300]}"


class ControlFollower:
    """Follows an agent's control ConfigMap from a background thread; ``state()`` is always current.

    >>> follower = ControlFollower("refund-agent", "support").start()
    >>> follower.state().shadow
    False

    ``kubeconfig`` names a kubeconfig file; without one the pod's service account is used (in-cluster).
    ``on_change`` is called (from the follower's thread) with every new state. Each watch request lasts
    ``watch_timeout_seconds`` (then resumes from its resourceVersion), so a connection that died
    silently is noticed within that time plus 15 s.
    """

    def __init__(
        self,
        agent: str,
        namespace: str,
        *,
        kubeconfig: str | Path | None = None,
        context: str | None = None,
        mount_dir: str | Path = CONTROL_MOUNT,
        poll_interval: float = 3.0,
        watch_timeout_seconds: int = 60,
        connect_timeout: float = 3.0,
        max_backoff: float = 30.0,
        on_change: Callable[[ControlState], None] | None = None,
    ) -> None:
        self.agent = agent
        self.namespace = namespace
        self.configmap = names.control_configmap(agent)
        self.kubeconfig = Path(kubeconfig) if kubeconfig else None
        self.context = context
        self.mount_dir = Path(mount_dir)
        self.poll_interval = poll_interval
        self.watch_timeout_seconds = watch_timeout_seconds
        self.connect_timeout = connect_timeout
        self._backoff = _Backoff(maximum=max_backoff)
        self._on_change = on_change
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None
        self._failing = False
        self._api: CoreV1Api | None = None
        self._last_api_state: ControlState | None = None
        self._mount_baseline: tuple[dict[str, str] | None, str | None] | None = None
        self._state = read_mounted_state(self.mount_dir) or ControlState()

    # -- public ------------------------------------------------------------------------------------

    def state(self) -> ControlState:
        """The control state to honour now (cheap: call it before every tool call)."""
        with self._changed:
            return self._state

    def start(self, *, wait_seconds: float = 5.0) -> ControlFollower:
        """Start following; waits up to ``wait_seconds`` for a first answer (from the API or the files)."""
        if self._thread is not None:
            return self
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"tourniquet-control-{self.agent}", daemon=True)
        self._thread.start()
        if wait_seconds > 0:
            self._synced.wait(wait_seconds)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following and wait for the thread; the last state stays readable."""
        self._stopping.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()  # unblocks a read in progress (urllib3 >= 2.3)
            except Exception:  # best effort; the thread also stops on its read timeout
                log.debug("Could not interrupt the control watch", exc_info=True)
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait_for(self, predicate: Callable[[ControlState], bool], timeout: float) -> ControlState:
        """Block until the state satisfies ``predicate``; raises ``TimeoutError`` (with the last state)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self._state):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"control state still {self._state.describe()} after {timeout:.1f}s")
                self._changed.wait(remaining)
            return self._state

    def __enter__(self) -> ControlFollower:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------------------------

    def _publish(self, new: ControlState) -> None:
        with self._changed:
            old = self._state
            self._state = new
            self._changed.notify_all()
        self._synced.set()
        if (old.mode, old.revoked_tools, old.error) != (new.mode, new.revoked_tools, new.error):
            level = logging.WARNING if new.shadow or new.revoked_tools or new.error else logging.INFO
            log.log(level, "Control flag of %s changed: %s", self.agent, new.describe())
        if self._on_change is not None:
            try:
                self._on_change(new)
            except Exception:  # a listener must not stop the follower
                log.exception("The control on_change callback failed")

    def _publish_api(self, configmap: Mapping[str, Any] | None, resource_version: str | None) -> None:
        data = None if configmap is None else (configmap.get("data") or {})
        state = parse_control(data, source="api", resource_version=resource_version)
        self._last_api_state = state
        self._mount_baseline = None
        self._publish(state)

    # -- the loop ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                api = self._connect()
                resource_version = self._list(api)
                if self._failing:
                    log.info("Reconnected to the API for %s", self.configmap)
                    self._failing = False
                self._backoff.reset()
                while not self._stopping.is_set():
                    started = time.monotonic()
                    resource_version, events = self._watch(api, resource_version)
                    if events == 0 and time.monotonic() - started < 1.0:
                        self._stopping.wait(self._backoff.next())  # a server that ends watches at once
                    else:
                        self._backoff.reset()
            except _Gone:
                log.info("Control watch of %s expired (410 Gone); listing again", self.configmap)
            except Exception as exc:  # every failure means: back off, use the files meanwhile
                if self._stopping.is_set():
                    break
                reason = _describe_api_error(exc)
                delay = self._backoff.next()
                if isinstance(exc, _NoApiAccess) or getattr(exc, "status", None) in (401, 403):
                    delay = max(delay, 10 * self.poll_interval)
                level = logging.DEBUG if self._failing else logging.WARNING
                log.log(
                    level,
                    "Fell back to the mounted files for %s (retrying the API in %.1fs): %s",
                    self.configmap,
                    delay,
                    reason,
                )
                self._failing = True
                self._follow_files(reason, delay)

    def _connect(self) -> CoreV1Api:
        if self._api is not None:
            return self._api
        try:
            from kubernetes import config
        except ImportError as exc:  # pragma: no cover - kubernetes is a dependency
            raise _NoApiAccess("the kubernetes client is not installed") from exc
        try:
            self._api = core_v1_api(self.kubeconfig, self.context)  # the follower backs off by itself
        except (config.ConfigException, OSError) as exc:
            where = f"kubeconfig {self.kubeconfig}" if self.kubeconfig else "in-cluster service account"
            raise _NoApiAccess(f"no API configuration ({where}): {exc}") from exc
        return self._api

    def _list(self, api: CoreV1Api) -> str | None:
        response: Any = api.list_namespaced_config_map(  # the raw HTTP response (_preload_content=False)
            self.namespace,
            field_selector=f"metadata.name={self.configmap}",
            _preload_content=False,
            _request_timeout=(self.connect_timeout, 30),
        )
        try:
            body = json.loads(response.data)
        finally:
            response.release_conn()
        items = [i for i in body.get("items") or [] if (i.get("metadata") or {}).get("name") == self.configmap]
        resource_version = (body.get("metadata") or {}).get("resourceVersion")
        self._publish_api(items[0] if items else None, resource_version)
        return str(resource_version) if resource_version else None

    def _watch(self, api: CoreV1Api, resource_version: str | None) -> tuple[str | None, int]:
        """One watch request, until the server ends it: the resourceVersion to resume from, and how many events."""
        try:
            response: Any = api.list_namespaced_config_map(
                self.namespace,
                field_selector=f"metadata.name={self.configmap}",
                watch=True,
                allow_watch_bookmarks=True,
                resource_version=resource_version,
                timeout_seconds=self.watch_timeout_seconds,
                _preload_content=False,
                _request_timeout=(self.connect_timeout, self.watch_timeout_seconds + 15),
            )
        except Exception as exc:
            if getattr(exc, "status", None) == 410:
                raise _Gone from exc
            raise
        self._response = response
        events = 0
        try:
            if self._stopping.is_set():
                return resource_version, events
            for line in _lines(response):
                events += 1
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                if kind == "BOOKMARK" or (obj.get("metadata") or {}).get("name") != self.configmap:
                    continue
                self._publish_api(None if kind == "DELETED" else obj, resource_version)
                if self._stopping.is_set():
                    break
        finally:
            self._response = None
            response.release_conn()
        return resource_version, events

    def _follow_files(self, reason: str, duration: float) -> None:
        """Poll the mounted files for ``duration`` seconds, never loosening the last API state on a stale mount."""
        if self._mount_baseline is None:
            self._mount_baseline = read_mount(self.mount_dir)
        deadline = time.monotonic() + duration
        while not self._stopping.is_set():
            data, error = read_mount(self.mount_dir)
            if (data, error) != self._mount_baseline:
                self._last_api_state = None  # the kubelet has synced something newer than the API's last word
            if error:
                state: ControlState | None = ControlState(mode=SHADOW, source="file", error=f"failing closed: {error}")
            elif data is None:
                state = None  # nothing mounted: keep what we have
            else:
                state = parse_control(data, source="file")
                if self._last_api_state is not None:
                    # The mount may lag behind what the API last said: loosen nothing until it changes.
                    state = stricter(self._last_api_state, state)
            current = self.state()
            self._publish(replace(state or current, fallback_reason=reason))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._stopping.wait(min(self.poll_interval, remaining))
