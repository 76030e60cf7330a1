"""The agent's side in operator tests: the runtime library following its control ConfigMap and reporting what it
applies (`tourniquet.runtime.ack`), as a pod of the agent would, under an identity with the Role the README gives
the agent (on the real control plane; the emulator allows everything)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tourniquet.runtime.ack import Acknowledger
from tourniquet.runtime.control import ControlFollower


def agent_role(agent: str, user: str) -> list[dict[str, Any]]:
    """What the README says an agent's ServiceAccount needs: follow its control ConfigMap, report into its
    acknowledgement ConfigMap. Nothing else (it cannot change its own kill switch)."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": f"{agent}-runtime"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [f"{agent}-control"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [f"{agent}-control-ack"],
                    "verbs": ["patch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{agent}-runtime"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{agent}-runtime"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    ]


def runtime_kubeconfig(cluster: Any, kubeconfig: str, tmp_path: Path, agent: str = "refund-agent") -> str:
    if cluster.backend == "emulator":
        return kubeconfig
    from tests.realcluster import write_user_kubeconfig

    user = f"{agent}-runtime"
    cluster.apply(agent_role(agent, user))  # the runtime retries until the authorizer has learnt of it
    return str(write_user_kubeconfig(cluster.plane, tmp_path / f"{agent}-runtime", user, (), cluster.namespace))


@contextlib.contextmanager
def agent_runtime(
    cluster: Any, kubeconfig: str, tmp_path: Path, agent: str = "refund-agent", pod: str = "refund-agent-worker-7f9c4"
) -> Iterator[tuple[ControlFollower, Acknowledger]]:
    """A pod of the agent: its control follower, and its acknowledger reporting each change (and a heartbeat)."""
    config = runtime_kubeconfig(cluster, kubeconfig, tmp_path, agent)
    ack = Acknowledger(agent, cluster.namespace, pod, kubeconfig=config, heartbeat_seconds=1.0).start()
    follower = ControlFollower(
        agent, cluster.namespace, kubeconfig=config, mount_dir=tmp_path / "no-mount", on_change=ack.report
    )
    follower.start()
    try:
        yield follower, ack
    finally:
        follower.stop()
        ack.stop()
