"""Bundle revisions: content hashing, revision numbering, rollback targets, pruning, promotion.

A bundle (model + prompt + tool schemas) is pinned as one immutable ConfigMap per revision. The
ConfigMaps themselves are the record: each carries its revision, content hash and verdict as labels,
so the history survives a lost status and an operator restart. Everything here is pure.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tourniquet.domain import names
from tourniquet.domain.conditions import parse_time
from tourniquet.models import Bundle, RevisionVerdict, RollbackTarget, RollbackTo

# A ConfigMap's data may not exceed 1 MiB (the API server refuses it).
CONFIGMAP_DATA_LIMIT = 1024 * 1024
HASH_LABEL_LENGTH = 16


def canonical_bundle(bundle: Bundle) -> dict[str, Any]:
    """The bundle with every default made explicit, so equal meaning gives equal bytes."""
    return bundle.to_api()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def bundle_sha256(bundle: Bundle) -> str:
    return hashlib.sha256(canonical_json(canonical_bundle(bundle)).encode()).hexdigest()


def short_hash(sha256: str) -> str:
    return sha256[:HASH_LABEL_LENGTH]


def bundle_data(bundle: Bundle) -> dict[str, str]:
    """The ConfigMap data an agent reads: the whole bundle, plus its prompt as plain text."""
    content = canonical_bundle(bundle)
    return {
        "bundle.json": json.dumps(content, sort_keys=True, indent=2, ensure_ascii=False) + "\n",
        "prompt.txt": bundle.prompt.template,
    }


def data_size(data: dict[str, str]) -> int:
    return sum(len(key.encode()) + len(value.encode()) for key, value in data.items())


def size_problem(data: dict[str, str]) -> str | None:
    size = data_size(data)
    if size <= CONFIGMAP_DATA_LIMIT:
        return None
    return (
        f"the bundle is {size / 1024 / 1024:.2f} MiB but a ConfigMap holds at most 1 MiB; "
        "shorten the prompt template or the tool schemas, or reference large documents from the agent"
    )


@dataclass(frozen=True)
class StoredRevision:
    """One bundle ConfigMap as observed."""

    revision: int
    hash: str
    name: str
    created_at: str | None = None
    verdict: RevisionVerdict = RevisionVerdict.UNKNOWN
    evaluation: str | None = None  # passed | overridden: what the redeploy gate recorded (domain.gate)


def stored_revision_from_configmap(cm: dict[str, Any]) -> StoredRevision | None:
    meta = cm.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        revision = int(labels.get(names.LABEL_REVISION, ""))
    except ValueError:
        return None
    verdict = {"good": RevisionVerdict.GOOD, "bad": RevisionVerdict.BAD}.get(
        labels.get(names.LABEL_VERDICT, ""), RevisionVerdict.UNKNOWN
    )
    sha = (meta.get("annotations") or {}).get(names.ANNOTATION_SHA256) or labels.get(names.LABEL_HASH, "")
    return StoredRevision(
        revision=revision,
        hash=sha,
        name=meta.get("name", ""),
        created_at=meta.get("creationTimestamp"),
        verdict=verdict,
        evaluation=labels.get(names.LABEL_EVALUATION),
    )


@dataclass(frozen=True)
class RevisionPlan:
    """Which revision spec.bundle is, and whether its ConfigMap must be created."""

    revision: int
    create: bool


def plan_revision(sha256: str, stored: list[StoredRevision], highest_seen: int = 0) -> RevisionPlan:
    """Same content → same revision; new content → one past the highest revision ever seen."""
    matching = [r for r in stored if r.hash == sha256]
    if matching:
        return RevisionPlan(revision=max(r.revision for r in matching), create=False)
    top = max([highest_seen, *(r.revision for r in stored)])
    return RevisionPlan(revision=top + 1, create=True)


def last_known_good(stored: list[StoredRevision]) -> StoredRevision | None:
    good = [r for r in stored if r.verdict == RevisionVerdict.GOOD]
    return max(good, key=lambda r: r.revision) if good else None


class RollbackRefused(ValueError):
    """A rollback that must not happen; the message says why and what to do instead."""


def _kept(stored: list[StoredRevision]) -> str:
    return ", ".join(str(r.revision) for r in sorted(stored, key=lambda r: r.revision)) or "none"


def resolve_rollback(target: RollbackTarget, stored: list[StoredRevision]) -> StoredRevision:
    """The revision a rollback asks for, or RollbackRefused with a message a person can act on."""
    by_revision = {r.revision: r for r in stored}
    if target.to == RollbackTo.LAST_KNOWN_GOOD:
        good = last_known_good(stored)
        if good is None:
            raise RollbackRefused(
                "no revision is known good yet (a revision becomes known good after it runs its soak "
                f"time with no incident); roll back to an exact revision instead (kept: {_kept(stored)})"
            )
        return good
    assert target.revision is not None
    chosen = by_revision.get(target.revision)
    if chosen is None:
        raise RollbackRefused(f"revision {target.revision} does not exist (kept revisions: {_kept(stored)})")
    if chosen.verdict == RevisionVerdict.BAD:
        others = [r for r in stored if r.verdict != RevisionVerdict.BAD]
        raise RollbackRefused(
            f"revision {target.revision} is marked bad (it was implicated in an incident) and is never a "
            f"rollback target; choose another revision (not bad: {_kept(others)})"
        )
    return chosen


def plan_prune(stored: list[StoredRevision], limit: int, keep: set[int]) -> list[StoredRevision]:
    """Revisions beyond the newest `limit`, never one in `keep` (the active and last-known-good)."""
    newest_first = sorted(stored, key=lambda r: r.revision, reverse=True)
    retained = {r.revision for r in newest_first[:limit]} | keep
    return [r for r in newest_first if r.revision not in retained]


def should_promote(
    active: StoredRevision,
    active_since: str | None,
    now: datetime,
    soak_seconds: int,
    open_incidents: int,
) -> bool:
    """A revision becomes known good only on evidence: it ran its soak time with no incident open."""
    if active.verdict != RevisionVerdict.UNKNOWN or open_incidents:
        return False
    since = parse_time(active_since)
    return since is not None and now - since >= timedelta(seconds=soak_seconds)


@dataclass
class BundleDecision:
    """The outcome of the bundle decision for one agent."""

    spec_revision: int
    spec_sha256: str
    create: bool
    active: int
    active_reason: str  # Pinned | RolledBack
    prune: list[StoredRevision] = field(default_factory=list)
