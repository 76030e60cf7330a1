"""The Kubernetes client of the runtime's background threads (the control follower, the acknowledger)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api


def core_v1_api(kubeconfig: Path | None, context: str | None) -> CoreV1Api:
    """A client from the kubeconfig file (its ``context``), or from the pod's service account without one; it never
    retries by itself (its callers back off on their own). The kubernetes package's errors pass through."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(
            config_file=str(kubeconfig),
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    else:
        config.load_incluster_config(client_configuration=configuration)
    configuration.retries = 0
    return client.CoreV1Api(client.ApiClient(configuration))
