"""Deterministic names, labels and annotations of everything Tourniquet creates or marks."""

from __future__ import annotations

PREFIX = "tourniquet.dev"
FIELD_MANAGER = "tourniquet"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "tourniquet"
LABEL_AGENT = f"{PREFIX}/agent"
LABEL_COMPONENT = f"{PREFIX}/component"  # bundle | control | evidence
LABEL_REVISION = f"{PREFIX}/revision"
LABEL_HASH = f"{PREFIX}/bundle-hash"
LABEL_VERDICT = f"{PREFIX}/verdict"  # good | bad; absent means not yet proven either way
LABEL_EVALUATION = f"{PREFIX}/evaluation"  # passed | overridden: the redeploy gate's record (domain.gate)

ANNOTATION_SHA256 = f"{PREFIX}/bundle-sha256"
ANNOTATION_VERDICT_REASON = f"{PREFIX}/verdict-reason"
ANNOTATION_BUNDLE = f"{PREFIX}/bundle"  # on a consumer's pod template: the bundle ConfigMap it mounts
ANNOTATION_BUNDLE_REVISION = f"{PREFIX}/bundle-revision"
# On an AgentIncident: when `tourniquet contain` or detection opened it (RFC 3339, microseconds), written just
# before creating it; its timings start there (the creationTimestamp has only whole seconds).
ANNOTATION_OPENED_AT = f"{PREFIX}/opened-at"

# The watch-freshness canary: an AgentIncident the operator owns, never an incident (tourniquet.freshness).
CANARY_NAME = "tourniquet-canary"
LABEL_CANARY = f"{PREFIX}/canary"
ANNOTATION_CANARY_WRITTEN = f"{PREFIX}/canary-written"

COMPONENT_BUNDLE = "bundle"
COMPONENT_CONTROL = "control"


def bundle_configmap(agent: str, revision: int) -> str:
    return f"{agent}-bundle-{revision}"


def control_configmap(agent: str) -> str:
    return f"{agent}-control"


def network_policy(agent: str) -> str:
    return f"{agent}-egress"


def evidence_configmap(incident: str) -> str:
    return _bounded(f"{incident}-evidence")


def _bounded(name: str, limit: int = 253) -> str:
    """Deterministic and within the name limit: a long name keeps a hash of the whole."""
    if len(name) <= limit:
        return name
    import hashlib

    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: limit - 11].rstrip('-.')}-{digest}"


def bundle_selector(agent: str) -> str:
    return f"{LABEL_AGENT}={agent},{LABEL_COMPONENT}={COMPONENT_BUNDLE}"


def owner_reference(kind: str, name: str, uid: str, api_version: str = "tourniquet.dev/v1alpha1") -> dict[str, object]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned(
    api_version: str,
    kind: str,
    name: str,
    namespace: str,
    owner: dict[str, object],
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    **fields: object,
) -> dict[str, object]:
    """The body of an object the operator creates, owned (for garbage collection) by `owner`."""
    metadata: dict[str, object] = {"name": name, "namespace": namespace, "ownerReferences": [owner]}
    if labels:
        metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **fields}
