"""Bundle revisions as a GitOps user sees them: same content, same revision; rollbacks are safe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tourniquet.domain import bundles
from tourniquet.domain.bundles import StoredRevision
from tourniquet.models import Bundle, RevisionVerdict, RollbackTarget
from tourniquet.models.common import RollbackTo

GOOD, BAD, UNKNOWN = RevisionVerdict.GOOD, RevisionVerdict.BAD, RevisionVerdict.UNKNOWN


def bundle(prompt: str = "You are the refund assistant.", **tool: object) -> Bundle:
    return Bundle.model_validate(
        {
            "model": {"provider": "openai", "name": "gpt-5", "version": "2026-08-06"},
            "prompt": {"template": prompt},
            "tools": [{"name": "issue_refund", **tool}],
        }
    )


def rev(n: int, verdict: RevisionVerdict = UNKNOWN, sha: str | None = None) -> StoredRevision:
    return StoredRevision(n, sha or f"hash{n}", f"agent-bundle-{n}", None, verdict)


def test_equal_meaning_gives_equal_hash_even_with_defaults_spelled_out():
    assert bundles.bundle_sha256(bundle()) == bundles.bundle_sha256(bundle(sideEffects="write"))
    assert bundles.bundle_sha256(bundle()) != bundles.bundle_sha256(bundle("You are careful."))


@pytest.mark.parametrize(
    ("sha", "stored", "highest", "expected"),
    [
        ("a", [], 0, bundles.RevisionPlan(1, True)),
        ("a", [rev(1, sha="a")], 0, bundles.RevisionPlan(1, False)),
        ("b", [rev(1, sha="a")], 0, bundles.RevisionPlan(2, True)),
        # A GitOps revert to revision 1's content reuses revision 1: no revision 3.
        ("a", [rev(1, sha="a"), rev(2, sha="b")], 2, bundles.RevisionPlan(1, False)),
        # Numbers are never reused, even after pruning.
        ("c", [rev(5, sha="e")], 7, bundles.RevisionPlan(8, True)),
    ],
)
def test_plan_revision(sha, stored, highest, expected):
    assert bundles.plan_revision(sha, stored, highest) == expected


def test_rollback_to_a_bad_revision_is_refused_with_the_alternatives():
    stored = [rev(1, GOOD), rev(2, BAD), rev(3)]
    with pytest.raises(bundles.RollbackRefused, match=r"revision 2 is marked bad .* \(not bad: 1, 3\)"):
        bundles.resolve_rollback(RollbackTarget(revision=2), stored)


def test_rollback_to_a_pruned_revision_names_what_is_kept():
    with pytest.raises(bundles.RollbackRefused, match=r"revision 1 does not exist \(kept revisions: 4, 5\)"):
        bundles.resolve_rollback(RollbackTarget(revision=1), [rev(4), rev(5)])


def test_last_known_good_is_the_newest_good_never_merely_the_older():
    stored = [rev(1, GOOD), rev(2, GOOD), rev(3, BAD), rev(4)]
    assert bundles.resolve_rollback(RollbackTarget(to=RollbackTo.LAST_KNOWN_GOOD), stored).revision == 2
    with pytest.raises(bundles.RollbackRefused, match="no revision is known good yet"):
        bundles.resolve_rollback(RollbackTarget(to=RollbackTo.LAST_KNOWN_GOOD), [rev(1), rev(2)])


def test_prune_keeps_the_newest_and_never_the_active_or_last_known_good():
    stored = [rev(n) for n in range(1, 8)]
    pruned = bundles.plan_prune(stored, limit=3, keep={1, 2})
    assert [r.revision for r in pruned] == [4, 3]


def test_promotion_needs_the_full_soak_with_no_incident():
    now = datetime(2026, 11, 21, 12, tzinfo=UTC)
    since = (now - timedelta(seconds=3600)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert bundles.should_promote(rev(3), since, now, 3600, open_incidents=0)
    assert not bundles.should_promote(rev(3), since, now, 3601, open_incidents=0)
    assert not bundles.should_promote(rev(3), since, now, 3600, open_incidents=1)
    assert not bundles.should_promote(rev(3, BAD), since, now, 0, open_incidents=0)
    assert not bundles.should_promote(rev(3), None, now, 0, open_incidents=0)


def test_a_bundle_over_one_mebibyte_is_refused_with_a_reason():
    data = bundles.bundle_data(bundle("x" * (1024 * 1024)))
    problem = bundles.size_problem(data)
    assert problem is not None and "a ConfigMap holds at most 1 MiB" in problem
    assert bundles.size_problem(bundles.bundle_data(bundle())) is None
