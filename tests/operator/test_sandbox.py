"""`tourniquet sandbox`, as a newcomer runs it: the example agent pinned, kubectl working, no cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for


@pytest.fixture
def sandbox(tmp_path: Path):
    workdir = tmp_path / "sandbox"
    process = subprocess.Popen(
        [sys.executable, "-m", "tourniquet.cli", "sandbox", "--dir", str(workdir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "operator")},
    )
    kubeconfig = workdir / "kubeconfig"
    try:
        wait_for(lambda: kubeconfig.exists(), timeout=30, what="the sandbox kubeconfig")
        yield kubeconfig, process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def kubectl(kubeconfig: Path, *args: str) -> str:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_sandbox_serves_the_example_agent_pinned_at_revision_1(sandbox):
    kubeconfig, _ = sandbox

    def revision() -> int | None:
        out = subprocess.run(
            ["kubectl", f"--kubeconfig={kubeconfig}", "get", "agentdeployments", "-o", "json"],
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
    status = subprocess.run(
        [sys.executable, "-m", "tourniquet.cli", "status", "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT / "operator")},
    )
    assert status.returncode == 0 and "refund-agent" in status.stdout, status.stderr
