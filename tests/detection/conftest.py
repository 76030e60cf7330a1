"""Fixtures for detection: a scriptable fake of Prometheus's query API, and a real Prometheus process."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="needs the prometheus and promtool binaries (Debian: apt-get install prometheus); CI installs them",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---------------------------------------------------------------- a fake /api/v1/query


@dataclass
class FakePrometheus:
    """/api/v1/query answering from `results` (expr -> vector), or failing the way it is told to."""

    results: dict[str, Any] = field(default_factory=dict)
    mode: str = "ok"  # ok | 503 | slow | garbage
    delay: float = 0.0
    rejected: dict[str, str] = field(default_factory=dict)  # expr -> Prometheus's error
    queries: list[dict[str, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        self.queries.append(params)
        self.headers.append(dict(request.headers))
        expr = params.get("query", "")
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "503":
            return web.json_response(
                {"status": "error", "errorType": "unavailable", "error": "TSDB not ready"}, status=503
            )
        if self.mode == "garbage":
            return web.Response(text="<html>login</html>")
        if expr in self.rejected:
            error = {"status": "error", "errorType": "bad_data", "error": self.rejected[expr]}
            return web.json_response(error, status=400)
        result = self.results.get(expr, [])
        kind = "scalar" if result and not isinstance(result[0], dict) else "vector"
        return web.json_response({"status": "success", "data": {"resultType": kind, "result": result}})


@pytest.fixture
async def fake_prometheus() -> AsyncIterator[FakePrometheus]:
    fake = FakePrometheus()
    app = web.Application()
    app.router.add_route("*", "/api/v1/query", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


# ---------------------------------------------------------------- a real Prometheus


class PrometheusProcess:
    """Debian's Prometheus on a random loopback port with a temporary TSDB; can stop and start again."""

    def __init__(self, workdir: Path, targets: list[str], scrape_interval: str = "1s") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        jobs = "\n".join(
            f"  - job_name: agents-{i}\n    static_configs: [{{targets: ['{target}']}}]"
            for i, target in enumerate(targets)
        )
        self.config.write_text(
            f"global: {{scrape_interval: {scrape_interval}, evaluation_interval: 1m}}\nscrape_configs:\n{jobs}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "prometheus.log"

    def start(self) -> PrometheusProcess:
        assert PROMETHEUS is not None
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=30d",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"prometheus not ready after 15s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def query(self, expr: str) -> list[Any]:
        import json
        import urllib.parse

        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}") as answer:
            result: list[Any] = json.loads(answer.read())["data"]["result"]
        return result

    def wait_scraping(self, timeout: float = 15) -> None:
        """Until every target was scraped once (Prometheus's discovery waits ~5 s before the first scrape)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            up = self.query("up")
            if up and all(s["value"][1] == "1" for s in up):
                return
            time.sleep(0.1)
        raise AssertionError(f"Prometheus did not scrape its targets within {timeout}s")


@pytest.fixture(scope="module")
def prometheus_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., PrometheusProcess]]:
    started: list[PrometheusProcess] = []

    def make(targets: list[str], **options: Any) -> PrometheusProcess:
        process = PrometheusProcess(tmp_path_factory.mktemp("prometheus"), targets, **options)
        started.append(process.start())
        return process

    yield make
    for process in started:
        process.stop()
