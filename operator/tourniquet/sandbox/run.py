"""`tourniquet sandbox`: the embedded default. An API server with the CRDs, the operator, a kubeconfig."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from tourniquet import crdgen


def example_documents(directory: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


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
        if examples and examples_dir.is_dir():
            docs = example_documents(examples_dir)
            server.apply_manifests(docs)
            applied = [f"{d['kind']}/{d['metadata']['name']}" for d in docs]
        print(
            f"\nTourniquet sandbox: an embedded Kubernetes API at {server.url}, with the CRDs installed and the\n"
            f"operator running against it. In another shell:\n\n"
            f"  export KUBECONFIG={kubeconfig}\n"
            f"  kubectl get agentdeployments,agentincidents\n"
            f"  kubectl get configmaps,networkpolicies\n"
            f"  kubectl apply --validate=false -f examples/refund-agent.yaml\n"
            f"  tourniquet status\n\n"
            + (f"Applied from examples/: {', '.join(applied)}\n" if applied else "")
            + "It is an emulator: no pods run and nothing is persisted. Press Ctrl-C to stop.\n",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_operator([], liveness=None))
