"""The benchmarks' `--server real` mode runs end to end at a tiny size, so the switch cannot rot unnoticed.

Each benchmark starts its own real control plane, measures its floor and the operator on it, and ends with its
summary line. Nothing about timing is asserted: only that it ran on the real API server and that every agent
(incident) it made was seen wired (contained), the operator's work on the real server.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.controlplane import ROOT, default_bin_dir, missing_binaries

RUNS = {
    "agentdeployments": (["--sizes", "3"], "3 agents at once, 1 round: operator p50"),
    "incidents": (["--agents", "3", "--sizes", "3", "--settle", "0"], "3 at once, 1 round: operator p99"),
}


@pytest.mark.parametrize("bench", sorted(RUNS))
def test_the_benchmark_runs_on_the_real_control_plane(bench: str) -> None:
    missing = missing_binaries()
    if missing:
        pytest.skip(
            f"no real control plane: {', '.join(missing)} missing in {default_bin_dir()}; run `make controlplane`"
        )
    args, measured = RUNS[bench]
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / f"bench_{bench}.py"),
            "--server",
            "real",
            "--rest",
            "1",
            "--timeout",
            "30",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"summary: {bench} on ") and "real kube-apiserver v" in summary, run.stdout
    assert measured in summary and "never seen" not in summary, run.stdout
