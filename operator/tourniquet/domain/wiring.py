"""Wiring the active bundle into a consumer's pod template, touching nothing else on the workload.

The patch is a strategic merge: volumes merge by name, volumeMounts by mountPath, containers by
name, so the user's own volumes, mounts, env and annotations stay as they are. A patch is planned
only when the observed template differs from the desired one; a converged consumer gets no write.
"""

from __future__ import annotations

from typing import Any

from tourniquet.domain import names

BUNDLE_VOLUME = "tourniquet-bundle"
CONTROL_VOLUME = "tourniquet-control"
BUNDLE_MOUNT = "/etc/tourniquet/bundle"
ENV_AGENT = "TOURNIQUET_AGENT"
ENV_NAMESPACE = "TOURNIQUET_NAMESPACE"
CONTROL_MOUNT = "/etc/tourniquet/control"


def _template(workload: dict[str, Any]) -> dict[str, Any]:
    return ((workload.get("spec") or {}).get("template")) or {}


def wired_revision(workload: dict[str, Any]) -> int | None:
    """The bundle revision a consumer's pod template names, if any."""
    annotations = (_template(workload).get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations[names.ANNOTATION_BUNDLE_REVISION])
    except (KeyError, ValueError):
        return None


def wired_agent(workload: dict[str, Any]) -> str | None:
    """The agent whose bundle a consumer's pod template is wired to, if any."""
    annotations = (_template(workload).get("metadata") or {}).get("annotations") or {}
    agent = annotations.get(names.LABEL_AGENT)
    return str(agent) if agent else None


def names_consumer(agent: dict[str, Any], kind: str, name: str) -> bool:
    """Whether an AgentDeployment (as read, not yet validated) names this workload among its consumers."""
    consumers = (agent.get("spec") or {}).get("consumers")
    return any(
        isinstance(c, dict) and c.get("name") == name and (c.get("kind") or "Deployment") == kind
        for c in consumers or []
    )


def claim_problem(kind: str, name: str, owner: str) -> str:
    return f"consumer {kind}/{name} already wired by agent {owner}"


def _desired_volumes(bundle_cm: str, control_cm: str) -> list[dict[str, Any]]:
    return [
        {"name": BUNDLE_VOLUME, "configMap": {"name": bundle_cm}},
        # The control flag reaches pods through the API within seconds; this mount is the fallback.
        {"name": CONTROL_VOLUME, "configMap": {"name": control_cm, "optional": True}},
    ]


def _desired_mounts() -> list[dict[str, Any]]:
    return [
        {"name": BUNDLE_VOLUME, "mountPath": BUNDLE_MOUNT, "readOnly": True},
        {"name": CONTROL_VOLUME, "mountPath": CONTROL_MOUNT, "readOnly": True},
    ]


def _desired_env(agent: str) -> list[dict[str, Any]]:
    """What the agent runtime (`tourniquet.runtime.Runtime.from_env`) needs to find its control ConfigMap."""
    return [
        {"name": ENV_AGENT, "value": agent},
        {"name": ENV_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]


def _contains(observed: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Every desired key is present with the desired value (the observed side may have more)."""
    for key, value in desired.items():
        if isinstance(value, dict):
            if not isinstance(observed.get(key), dict) or not _contains(observed[key], value):
                return False
        elif observed.get(key) != value:
            return False
    return True


def plan_wiring_patch(
    workload: dict[str, Any], *, agent: str, revision: int, bundle_cm: str, control_cm: str
) -> dict[str, Any] | None:
    """A strategic-merge patch that wires the bundle in, or None when it already is."""
    template = _template(workload)
    pod_spec = template.get("spec") or {}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    desired_annotations = {
        names.ANNOTATION_BUNDLE: bundle_cm,
        names.ANNOTATION_BUNDLE_REVISION: str(revision),
        names.LABEL_AGENT: agent,
    }
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    desired_volumes = _desired_volumes(bundle_cm, control_cm)
    containers = pod_spec.get("containers") or []
    desired_mounts = _desired_mounts()
    desired_env = _desired_env(agent)

    annotations_ok = all(annotations.get(k) == v for k, v in desired_annotations.items())
    volumes_ok = all(v["name"] in volumes and _contains(volumes[v["name"]], v) for v in desired_volumes)
    mounts_ok = all(
        any(_contains(m, want) for m in container.get("volumeMounts") or [])
        for container in containers
        for want in desired_mounts
    )
    env_ok = all(
        any(_contains(e, want) for e in container.get("env") or []) for container in containers for want in desired_env
    )
    if annotations_ok and volumes_ok and mounts_ok and env_ok:
        return None
    return {
        "spec": {
            "template": {
                "metadata": {"annotations": desired_annotations},
                "spec": {
                    "volumes": desired_volumes,
                    "containers": [
                        {"name": c["name"], "volumeMounts": desired_mounts, "env": desired_env}
                        for c in containers
                        if c.get("name")
                    ],
                },
            }
        }
    }


def plan_unwiring_patch(workload: dict[str, Any]) -> dict[str, Any] | None:
    """A strategic-merge patch that removes everything wiring added, or None when nothing is left."""
    template = _template(workload)
    pod_spec = template.get("spec") or {}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    ours = [names.ANNOTATION_BUNDLE, names.ANNOTATION_BUNDLE_REVISION, names.LABEL_AGENT]
    our_volumes = [v["name"] for v in pod_spec.get("volumes") or [] if v.get("name") in (BUNDLE_VOLUME, CONTROL_VOLUME)]
    ours_mounts, ours_env = (BUNDLE_MOUNT, CONTROL_MOUNT), (ENV_AGENT, ENV_NAMESPACE)
    containers = []
    for c in pod_spec.get("containers") or []:
        mounts = [m["mountPath"] for m in c.get("volumeMounts") or [] if m.get("mountPath") in ours_mounts]
        env = [e["name"] for e in c.get("env") or [] if e.get("name") in ours_env]
        if mounts or env:
            entry: dict[str, Any] = {"name": c["name"]}
            if mounts:
                entry["volumeMounts"] = [{"mountPath": m, "$patch": "delete"} for m in mounts]
            if env:
                entry["env"] = [{"name": e, "$patch": "delete"} for e in env]
            containers.append(entry)
    present = [a for a in ours if a in annotations]
    if not (present or our_volumes or containers):
        return None
    spec: dict[str, Any] = {}
    if our_volumes:
        spec["volumes"] = [{"name": v, "$patch": "delete"} for v in our_volumes]
    if containers:
        spec["containers"] = containers
    return {
        "spec": {
            "template": {
                "metadata": {"annotations": dict.fromkeys(present)},
                "spec": spec,
            }
        }
    }
