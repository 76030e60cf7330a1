"""Drain and restore of consumers (pure): scale to zero, remembering what to come back to.

The replicas before the drain are recorded on the workload itself, in the same atomic patch that
scales it to zero, and only when no record exists yet: a second drain, a retry or a restarted
operator never overwrites the value release must restore. The patch carries the observed
resourceVersion, so a concurrent change makes it fail (409) instead of recording a stale value.
"""

from __future__ import annotations

from typing import Any

from tourniquet.domain.names import PREFIX

ANNOTATION_REPLICAS_BEFORE = f"{PREFIX}/replicas-before-drain"
ANNOTATION_KEDA_BEFORE = f"{PREFIX}/keda-paused-replicas-before"
KEDA_PAUSED = "autoscaling.keda.sh/paused-replicas"
ABSENT = "-"  # recorded when the KEDA annotation did not exist before


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def replicas(workload: dict[str, Any]) -> int:
    value = (workload.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def recorded_replicas(workload: dict[str, Any]) -> int | None:
    try:
        return int(_annotations(workload)[ANNOTATION_REPLICAS_BEFORE])
    except (KeyError, ValueError):
        return None


def plan_drain_patch(workload: dict[str, Any]) -> dict[str, Any] | None:
    """Merge patch: record the current replicas (once) and scale to zero; None when already drained."""
    current = replicas(workload)
    recorded = recorded_replicas(workload)
    if current == 0 and recorded is not None:
        return None
    meta: dict[str, Any] = {"resourceVersion": (workload.get("metadata") or {}).get("resourceVersion")}
    if recorded is None:
        meta["annotations"] = {ANNOTATION_REPLICAS_BEFORE: str(current)}
    return {"metadata": meta, "spec": {"replicas": 0}}


def plan_restore_patch(workload: dict[str, Any]) -> dict[str, Any] | None:
    """Merge patch: restore the recorded replicas and drop the record; None when nothing is recorded."""
    recorded = recorded_replicas(workload)
    if recorded is None:
        return None
    return {
        "metadata": {
            "resourceVersion": (workload.get("metadata") or {}).get("resourceVersion"),
            "annotations": {ANNOTATION_REPLICAS_BEFORE: None},
        },
        "spec": {"replicas": recorded},
    }


def scaled_up_by(workload: dict[str, Any]) -> str:
    """Who last set spec.replicas: the manager of the managedFields entry that owns it (the latest, when
    several share it), e.g. `kubectl` for a `kubectl scale`; 'unknown' when no entry owns it."""
    latest: tuple[str, str] | None = None
    for entry in (workload.get("metadata") or {}).get("managedFields") or []:
        fields = (entry.get("fieldsV1") or {}).get("f:spec") or {}
        if "f:replicas" in fields and entry.get("manager"):
            moment = str(entry.get("time") or "")
            if latest is None or moment >= latest[0]:
                latest = (moment, str(entry["manager"]))
    return latest[1] if latest else "unknown"


def targets(scaled_object: dict[str, Any], kind: str, name: str) -> bool:
    ref = (scaled_object.get("spec") or {}).get("scaleTargetRef") or {}
    return ref.get("name") == name and ref.get("kind", "Deployment") == kind


def plan_keda_pause(scaled_object: dict[str, Any]) -> dict[str, Any] | None:
    """Pause a KEDA ScaledObject at zero replicas, recording its previous pause setting once."""
    annotations = _annotations(scaled_object)
    if annotations.get(KEDA_PAUSED) == "0" and ANNOTATION_KEDA_BEFORE in annotations:
        return None
    patch: dict[str, Any] = {KEDA_PAUSED: "0"}
    if ANNOTATION_KEDA_BEFORE not in annotations:
        patch[ANNOTATION_KEDA_BEFORE] = annotations.get(KEDA_PAUSED, ABSENT)
    return {"metadata": {"annotations": patch}}


def plan_keda_restore(scaled_object: dict[str, Any]) -> dict[str, Any] | None:
    annotations = _annotations(scaled_object)
    if ANNOTATION_KEDA_BEFORE not in annotations:
        return None
    before = annotations[ANNOTATION_KEDA_BEFORE]
    return {
        "metadata": {"annotations": {KEDA_PAUSED: None if before == ABSENT else before, ANNOTATION_KEDA_BEFORE: None}}
    }
