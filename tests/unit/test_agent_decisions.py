"""What an AgentDeployment's spec cannot say for itself, and the bundle decision under incidents."""

from __future__ import annotations

import pytest

from tourniquet.domain import agent as decide
from tourniquet.domain.bundles import StoredRevision, bundle_sha256
from tourniquet.domain.containment import Containment
from tourniquet.models import AgentDeploymentSpec, RevisionVerdict, RollbackTarget
from tourniquet.models.common import RollbackTo

SPEC = {
    "consumers": [{"name": "worker"}],
    "podSelector": {"matchLabels": {"app": "a"}},
    "bundle": {
        "model": {"provider": "p", "name": "m", "version": "2026-01-01"},
        "prompt": {"template": "t"},
        "tools": [{"name": "refund"}, {"name": "lookup", "sideEffects": "read"}],
    },
}


def spec(**changes) -> AgentDeploymentSpec:
    return AgentDeploymentSpec.model_validate({**SPEC, **changes})


def test_a_playbook_naming_an_unknown_tool_is_explained():
    problems = decide.spec_problems(
        spec(response={"SEV1": {"contain": ["revokeTools"], "revokeTools": ["teleport"]}}), [], "support"
    )
    assert problems == ["response.SEV1.revokeTools names unknown tool 'teleport' (tools in the bundle: lookup, refund)"]


def test_an_unknown_lever_and_a_floating_version_are_refused_with_the_field_named():
    parsed, message = decide.parse_spec({**SPEC, "response": {"SEV2": {"contain": ["freeze"]}}})
    assert parsed is None and "spec.response.SEV2.contain.0:" in message
    parsed, message = decide.parse_spec(
        {**SPEC, "bundle": {**SPEC["bundle"], "model": {"provider": "p", "name": "m", "version": "latest"}}}
    )
    assert parsed is None
    assert message.startswith(
        "spec.bundle.model.version: pin an exact model version; a floating version makes rollback impossible "
        "(pinned: a date such as 2026-08-06"
    )


def stored(*verdicts: RevisionVerdict, current_sha: str | None = None) -> list[StoredRevision]:
    return [StoredRevision(n, f"h{n}", f"a-bundle-{n}", None, v) for n, v in enumerate(verdicts, start=1)]


U, G, B = RevisionVerdict.UNKNOWN, RevisionVerdict.GOOD, RevisionVerdict.BAD


@pytest.mark.parametrize(
    ("history", "current", "containment", "rollback", "expected_active", "expected_reason", "frozen"),
    [
        # No incident: the spec's (new) revision rolls out.
        ([G, U], 2, Containment(), None, 3, "Pinned", False),
        # An incident is open: the new revision is pinned but held back.
        ([G, U], 2, Containment(incidents=["i"]), None, 2, "Pinned", True),
        # ...unless it is the incident's fix.
        ([G, U], 2, Containment(incidents=["i"], fixes={3}), None, 3, "Pinned", False),
        # An incident's rollback to last-known-good wins.
        (
            [G, U],
            2,
            Containment(incidents=["i"], rollbacks=[("i", RollbackTarget(to=RollbackTo.LAST_KNOWN_GOOD))]),
            None,
            1,
            "RolledBack",
            False,
        ),
        # No known-good revision: the rollback is refused, the agent stays where it is.
        (
            [U, U],
            2,
            Containment(incidents=["i"], rollbacks=[("i", RollbackTarget(to=RollbackTo.LAST_KNOWN_GOOD))]),
            None,
            2,
            "RollbackRefused",
            False,
        ),
        # An explicit rollback to a bad revision is refused.
        ([B, U], 2, Containment(), RollbackTarget(revision=1), 2, "RollbackRefused", False),
    ],
)
def test_the_active_revision(history, current, containment, rollback, expected_active, expected_reason, frozen):
    agent = spec(rollback=rollback.to_api() if rollback else None)
    plan = decide.plan_bundle(agent, stored(*history), len(history), current=current, containment=containment)
    assert (plan.active_revision, plan.reason, plan.frozen is not None) == (expected_active, expected_reason, frozen)
    assert plan.create == (bundle_sha256(agent.bundle) not in {f"h{n}" for n in range(1, len(history) + 1)})


def test_an_incident_rollback_marks_the_running_revision_bad_but_never_a_good_one():
    rollback = [("i", RollbackTarget(to=RollbackTo.LAST_KNOWN_GOOD))]
    plan = decide.plan_bundle(
        spec(), stored(G, U), 2, current=2, containment=Containment(incidents=["i"], rollbacks=rollback)
    )
    assert plan.mark_bad == [2]
    plan = decide.plan_bundle(
        spec(), stored(G, G), 2, current=2, containment=Containment(incidents=["i"], rollbacks=rollback)
    )
    assert plan.mark_bad == [] and plan.active_revision == 2


def test_a_new_bundle_over_a_configmaps_limit_is_refused_and_the_agent_stays_where_it_is():
    huge = spec(bundle={**SPEC["bundle"], "prompt": {"template": "x" * (1024 * 1024)}})
    plan = decide.plan_bundle(huge, stored(G), 1, current=1)
    assert (plan.reason, plan.pinned, plan.create, plan.active_revision) == ("BundleTooLarge", False, False, 1)
    assert "but a ConfigMap holds at most 1 MiB; shorten the prompt template" in plan.message


def test_a_bundle_already_pinned_is_planned_on_its_hash_alone():
    """An incident's pass plans on the revisions: the ConfigMap data (an indented dump of the whole bundle) is
    built only for a revision to create."""
    agent = spec()
    pinned = [StoredRevision(1, bundle_sha256(agent.bundle), "a-bundle-1", None, G)]
    plan = decide.plan_bundle(agent, pinned, 1, current=1)
    assert (plan.create, plan.spec_revision, plan.data) == (False, 1, {})
    new = decide.plan_bundle(agent, stored(G), 1, current=1)
    assert new.create and '"template": "t"' in new.data["bundle.json"] and new.data["prompt.txt"] == "t"
