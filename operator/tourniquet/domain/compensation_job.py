"""The compensation Job: the runtime's worker in the agent's own image, built from a consumer's pod template (pure).

The compensators are the agent's code, so the worker runs where that code is: the consumer's pod template
gives the image, environment, secrets, volumes and service account. What changes:

* the container runs ``python -m tourniquet.runtime.compensate`` (no args), with the incident, the request
  (the selector and the bundle's declarations), the approved plan hash and the compensator modules in its
  environment, and the ledger's URL from the AgentDeployment's ``spec.ledger`` Secret;
* the pod's labels are the Job's own, not the agent's: the agent's ``podSelector`` (and so its egress
  NetworkPolicy, with revoked tools cut) must not select the worker, which calls the reversing tools;
* probes, ports and lifecycle hooks go (a run-to-completion pod), ``restartPolicy: Never``; the first
  container is the agent's unless ``container`` names another; other containers are left out.

The name is deterministic, ``<incident>-compensate-<first 10 of the plan hash>`` (within 63 characters):
creating it twice for the same approved plan hits 409 AlreadyExists, and a new approval (a new hash) is
a new Job. Retries: ``backoffLimit`` pods; a killed pod's successor resumes (the ledger's claims).
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from tourniquet.domain import names

JOB_NAME_LIMIT = 63
LABEL_INCIDENT = f"{names.PREFIX}/incident"
LABEL_PLAN = f"{names.PREFIX}/plan-hash"
COMPONENT_COMPENSATION = "compensation"
WORKER_COMMAND = ["python", "-m", "tourniquet.runtime.compensate"]
DROPPED_CONTAINER_FIELDS = ("livenessProbe", "readinessProbe", "startupProbe", "ports", "lifecycle", "args")


class JobSpecError(ValueError):
    """The consumer cannot carry the worker (no container, an unknown container name)."""


def compensation_job_name(incident: str, plan_hash: str) -> str:
    suffix = f"-compensate-{plan_hash[:10]}"
    head = incident[: JOB_NAME_LIMIT - len(suffix)].rstrip("-.")
    if len(incident) + len(suffix) > JOB_NAME_LIMIT:  # keep two long names from meeting
        digest = hashlib.sha256(incident.encode()).hexdigest()[:6]
        head = incident[: JOB_NAME_LIMIT - len(suffix) - 7].rstrip("-.") + "-" + digest
    return head + suffix


def desired_compensation_job(
    *,
    incident: dict[str, Any],
    agent: str,
    workload: dict[str, Any],
    request_json: str,
    plan_hash: str,
    ledger_secret: dict[str, str] | None,
    compensators: list[str],
    container: str | None = None,
    backoff_limit: int = 6,
) -> dict[str, Any]:
    """The Job body (see the module docstring). ``ledger_secret`` is ``{"name": ..., "key": ...}``; without it
    the worker uses whatever ledger the pod template's environment already names."""
    meta = incident.get("metadata") or {}
    name, namespace = meta["name"], meta["namespace"]
    template = copy.deepcopy(((workload.get("spec") or {}).get("template")) or {})
    pod = template.get("spec") or {}
    containers = pod.get("containers") or []
    kind, workload_name = workload.get("kind"), workload["metadata"]["name"]
    if not containers:
        raise JobSpecError(f"{kind} {workload_name} has no container to run the worker in")
    chosen = next((c for c in containers if c.get("name") == container), None) if container else containers[0]
    if chosen is None:
        raise JobSpecError(
            f"{kind} {workload_name} has no container {container} "
            f"(it has {', '.join(c.get('name', '?') for c in containers)})"
        )
    worker = {k: v for k, v in chosen.items() if k not in DROPPED_CONTAINER_FIELDS}
    worker["name"] = "compensate"
    worker["command"] = list(WORKER_COMMAND)
    ours = {
        "TOURNIQUET_AGENT": agent,
        "TOURNIQUET_NAMESPACE": namespace,
        "TOURNIQUET_INCIDENT": f"{namespace}/{name}",
        "TOURNIQUET_COMPENSATION_REQUEST": request_json,
        "TOURNIQUET_COMPENSATION_PLAN_HASH": plan_hash,
        "TOURNIQUET_COMPENSATORS": ",".join(compensators),
        "TOURNIQUET_METRICS_PORT": "off",
    }
    env = [e for e in worker.get("env") or [] if e.get("name") not in ours and e.get("name") != "TOURNIQUET_LEDGER"]
    env += [{"name": key, "value": value} for key, value in ours.items()]
    if ledger_secret is not None:
        env = [e for e in env if e.get("name") != "TOURNIQUET_LEDGER_URL_FILE"]
        env.append({"name": "TOURNIQUET_LEDGER", "valueFrom": {"secretKeyRef": dict(ledger_secret)}})
    worker["env"] = env
    labels = {
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
        names.LABEL_AGENT: agent,
        names.LABEL_COMPONENT: COMPONENT_COMPENSATION,
        LABEL_INCIDENT: name[:63].rstrip("-."),
        LABEL_PLAN: plan_hash[:63],
    }
    pod_spec = {k: v for k, v in pod.items() if k not in ("containers", "initContainers", "restartPolicy")}
    pod_spec["containers"] = [worker]
    pod_spec["restartPolicy"] = "Never"
    owner = names.owner_reference("AgentIncident", name, meta.get("uid", ""))
    template_annotations = (template.get("metadata") or {}).get("annotations") or {}
    return names.owned(
        "batch/v1",
        "Job",
        compensation_job_name(name, plan_hash),
        namespace,
        owner,
        labels=labels,
        spec={
            "backoffLimit": backoff_limit,
            "template": {
                "metadata": {"labels": labels, "annotations": template_annotations},
                "spec": pod_spec,
            },
        },
    )
