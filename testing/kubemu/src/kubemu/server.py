"""
Run the :class:`~kubemu.emulator.RealisticEmulator` from synchronous code.

The server gets its own thread and event loop. That is required when a Kopf operator runs in the
same process: when Kopf stops, it cancels every task created after it started (see
``kopf/_core/reactor/running.py``), including those of a server sharing its loop. It is also what
``tourniquet sandbox`` uses to serve ``kubectl`` while the operator runs in the main thread.

Usage::

    with ApiServerThread() as api:            # started on a random 127.0.0.1 port
        api.apply_manifests(crds + examples)  # CRDs first
        kubeconfig = api.write_kubeconfig(tmp_path / 'kubeconfig')
        obj = api.call(api.emulator.get_object, 'apps/v1/deployments', 'web', namespace='default')

Everything that touches the emulator's state must run in the server's loop: use :meth:`call`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, overload

import aiohttp.web
import yaml

from kubemu.emulator import RealisticEmulator

__all__ = ["ApiServerThread"]

T = TypeVar("T")
log = logging.getLogger(__name__)

# Applied first, in this order, so that what follows can use them.
_KIND_ORDER = {"CustomResourceDefinition": 0, "Namespace": 1}


class ApiServerThread:
    """
    A :class:`RealisticEmulator` served over HTTP from a background thread with its own event loop.

    ``start()`` binds ``host:port`` (port 0 picks a free one) and returns once the server accepts
    connections; ``stop()`` ends the watch streams and shuts the server down. Used as a context
    manager, it starts on entry (unless started already) and stops on exit.
    """

    def __init__(
        self,
        emulator: RealisticEmulator | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        **emulator_options: Any,
    ) -> None:
        self._emulator = emulator
        self._emulator_options = emulator_options
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._runner: aiohttp.web.ServerRunner | None = None
        self._bound: tuple[str, int] | None = None

    # ----------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._bound is not None

    @property
    def emulator(self) -> RealisticEmulator:
        if self._emulator is None:
            raise RuntimeError("The server is not started: there is no emulator yet.")
        return self._emulator

    @property
    def host(self) -> str:
        return self._require_bound()[0]

    @property
    def port(self) -> int:
        return self._require_bound()[1]

    @property
    def url(self) -> str:
        host, port = self._require_bound()
        return f"http://{host}:{port}"

    def _require_bound(self) -> tuple[str, int]:
        if self._bound is None:
            raise RuntimeError("The server is not started: call start() first.")
        return self._bound

    # ----------------------------------------------------------------------------------------------

    def start(self, host: str | None = None, port: int | None = None, *, timeout: float = 30.0) -> ApiServerThread:
        """
        Start serving (idempotent). Returns ``self``.

        If already running and a different, non-zero ``port`` (or another ``host``) is requested,
        the listener moves there; the emulator and its objects stay.
        """
        host = host if host is not None else self._host
        port = port if port is not None else self._port
        if self.running:
            current_host, current_port = self._require_bound()
            if host != current_host or (port and port != current_port):
                self.call(self._rebind, host, port)
            return self

        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main, args=(host, port, ready), name="kubemu-api-server", daemon=True
        )
        self._thread.start()
        try:
            ready.result(timeout=timeout)
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = None
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End every watch stream, stop the HTTP server and the thread (idempotent)."""
        thread, loop, stopped = self._thread, self._loop, self._stopped
        if thread is None or loop is None or stopped is None:
            return
        if thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(stopped.set)
            thread.join(timeout=timeout)
        self._thread = None
        self._bound = None

    def __enter__(self) -> ApiServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _main(self, host: str, port: int, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(host, port, ready))
        except BaseException as e:
            if not ready.done():
                ready.set_exception(e)
            else:
                log.exception("The API server thread failed; the server is down.")
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _serve(self, host: str, port: int, ready: concurrent.futures.Future[None]) -> None:
        if self._emulator is None:
            self._emulator = RealisticEmulator(**self._emulator_options)
        self._stopped = asyncio.Event()
        async with self._emulator:
            await self._bind(host, port)
            ready.set_result(None)
            try:
                await self._stopped.wait()
            finally:
                self._emulator.close_watches()
                await self._unbind()

    async def _bind(self, host: str, port: int) -> None:
        # No access log: the sandbox shares the console with the operator. Cancel handlers (watch
        # streams) when their client disconnects.
        server = aiohttp.web.Server(self.emulator, handler_cancellation=True, access_log=None)
        runner = aiohttp.web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        sockets = getattr(site._server, "sockets", None) or []
        bound_port = sockets[0].getsockname()[1] if sockets else port
        self._runner = runner
        self._bound = (host, bound_port)
        self.emulator._closing = False

    async def _unbind(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _rebind(self, host: str, port: int) -> None:
        self.emulator.close_watches()
        await self._unbind()
        await self._bind(host, port)

    # ----------------------------------------------------------------------------------------------

    @overload
    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = ..., **kwargs: Any) -> T: ...

    @overload
    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = ..., **kwargs: Any) -> T: ...

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = 30.0, **kwargs: Any) -> Any:
        """
        Run ``fn(*args, **kwargs)`` in the server's loop thread and return its result (or raise).

        ``fn`` may be a plain function or a coroutine function. Use it for anything that reads or
        changes the emulator: ``api.call(api.emulator.inject_fault, 'patch', 'apps/v1/deployments')``.
        """
        loop = self._loop
        if loop is None or not self.running:
            raise RuntimeError("The server is not running.")
        if threading.current_thread() is self._thread:
            raise RuntimeError("call() is for other threads; in the server loop, call the function directly.")

        async def invoke() -> Any:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                return await result
            return result

        future = asyncio.run_coroutine_threadsafe(invoke(), loop)
        return future.result(timeout=timeout)

    def write_kubeconfig(
        self, path: str | os.PathLike[str], namespace: str = "default", context: str = "tourniquet-sandbox"
    ) -> Path:
        """Write a kubeconfig for this server (plain HTTP, a user without credentials); return its path."""
        target = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
            "current-context": context,
            "preferences": {},
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        return target

    def apply_manifests(self, docs: Iterable[Mapping[str, Any] | None]) -> list[dict[str, Any]]:
        """
        Create (or, when they exist, merge into) every document: CRDs first, then Namespaces, then the rest.

        Returns the stored objects. Raises :class:`~kubemu.errors.ApiError` on the first
        document the API server would reject.
        """
        ordered = sorted(
            (dict(doc) for doc in docs if doc),
            key=lambda doc: _KIND_ORDER.get(str(doc.get("kind")), len(_KIND_ORDER)),
        )
        return self.call(self._apply_all, ordered)

    def _apply_all(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = []
        for doc in docs:
            meta = dict(doc.get("metadata") or {})
            meta.pop("resourceVersion", None)
            meta.pop("uid", None)
            meta.pop("creationTimestamp", None)
            results.append(self.emulator.apply_object({**doc, "metadata": meta}))
        return results

    def __repr__(self) -> str:
        where = self.url if self._bound else "not running"
        return f"{type(self).__name__}({where})"
