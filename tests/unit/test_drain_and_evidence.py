"""Drain records once and restores exactly; evidence is redacted and bounded."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tourniquet.domain import drain
from tourniquet.domain.evidence import EvidenceParts, build_evidence
from tourniquet.shared.redaction import redact, redact_all_patterns, redact_text


def workload(replicas: int | None, **annotations: str) -> dict:
    return {"metadata": {"resourceVersion": "7", "annotations": annotations}, "spec": {"replicas": replicas}}


def test_drain_records_the_replicas_once_in_the_same_patch():
    patch = drain.plan_drain_patch(workload(3))
    assert patch == {
        "metadata": {"resourceVersion": "7", "annotations": {drain.ANNOTATION_REPLICAS_BEFORE: "3"}},
        "spec": {"replicas": 0},
    }
    # Scaled back up during the incident: drained again, the record is not overwritten.
    again = drain.plan_drain_patch(workload(5, **{drain.ANNOTATION_REPLICAS_BEFORE: "3"}))
    assert again == {"metadata": {"resourceVersion": "7"}, "spec": {"replicas": 0}}
    assert drain.plan_drain_patch(workload(0, **{drain.ANNOTATION_REPLICAS_BEFORE: "3"})) is None


def test_restore_brings_back_the_recorded_value_and_drops_the_record():
    restore = drain.plan_restore_patch(workload(0, **{drain.ANNOTATION_REPLICAS_BEFORE: "3"}))
    assert restore["spec"] == {"replicas": 3}
    assert restore["metadata"]["annotations"] == {drain.ANNOTATION_REPLICAS_BEFORE: None}
    assert drain.plan_restore_patch(workload(3)) is None
    # An unset replicas field means 1, and 1 is what comes back.
    assert drain.plan_drain_patch(workload(None))["metadata"]["annotations"] == {drain.ANNOTATION_REPLICAS_BEFORE: "1"}


def managed(manager: str, time: str, *fields: str, subresource: str | None = None) -> dict:
    entry = {
        "manager": manager,
        "operation": "Update",
        "time": time,
        "fieldsV1": {"f:spec": {key: {} for key in fields}},
    }
    if subresource:
        entry["subresource"] = subresource
    return entry


@pytest.mark.parametrize(
    ("entries", "who"),
    [
        # kubectl scale owns spec.replicas through /scale; the creator keeps the template.
        (
            [
                managed("kubectl-create", "2026-11-21T03:00:00Z", "f:template"),
                managed("kubectl", "2026-11-21T03:05:00Z", "f:replicas", subresource="scale"),
            ],
            "kubectl",
        ),
        # An HPA's write is the latest of two that share the field (server-side apply shares ownership).
        (
            [
                managed("argocd-controller", "2026-11-21T03:09:00Z", "f:replicas"),
                managed("kube-controller-manager", "2026-11-21T03:01:00Z", "f:replicas"),
            ],
            "argocd-controller",
        ),
        # The operator's own drain is named like anyone else's.
        ([managed("tourniquet", "2026-11-21T03:00:00Z", "f:replicas")], "tourniquet"),
        # Nobody owns it: the server did not say.
        ([managed("kubectl-create", "2026-11-21T03:00:00Z", "f:template")], "unknown"),
        ([], "unknown"),
    ],
)
def test_who_scaled_a_consumer_is_the_manager_owning_its_replicas(entries: list[dict], who: str):
    assert drain.scaled_up_by({"metadata": {"managedFields": entries}, "spec": {"replicas": 3}}) == who


def test_keda_is_paused_at_zero_and_its_own_setting_restored():
    scaled = {"metadata": {"annotations": {}}, "spec": {"scaleTargetRef": {"name": "worker"}}}
    assert drain.targets(scaled, "Deployment", "worker") and not drain.targets(scaled, "StatefulSet", "worker")
    pause = drain.plan_keda_pause(scaled)
    assert pause == {"metadata": {"annotations": {drain.KEDA_PAUSED: "0", drain.ANNOTATION_KEDA_BEFORE: "-"}}}
    paused = {"metadata": {"annotations": pause["metadata"]["annotations"]}}
    assert drain.plan_keda_pause(paused) is None
    assert drain.plan_keda_restore(paused) == {
        "metadata": {"annotations": {drain.KEDA_PAUSED: None, drain.ANNOTATION_KEDA_BEFORE: None}}
    }
    was_paused = {"metadata": {"annotations": {drain.KEDA_PAUSED: "2"}}}
    repaused = {"metadata": {"annotations": drain.plan_keda_pause(was_paused)["metadata"]["annotations"]}}
    assert drain.plan_keda_restore(repaused)["metadata"]["annotations"][drain.KEDA_PAUSED] == "2"


def test_secrets_are_redacted_from_text_and_specs():
    text = (
        "calling api with Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345\n"
        "password=hunter2 OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwx "
        "token: eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abcdefghijkl"
    )
    clean = redact_text(text)
    for secret in (
        "abcdefghijklmnopqrstuvwxyz012345",
        "hunter2",
        "sk-proj-abcdefghijklmnopqrstuvwx",
        "eyJhbGciOiJIUzI1NiJ9",
    ):
        assert secret not in clean
    spec = {
        "containers": [
            {"env": [{"name": "STRIPE_SECRET", "value": "rk_live_123"}, {"name": "QUEUE", "value": "refunds"}]}
        ]
    }
    env = redact(spec)["containers"][0]["env"]
    assert env[0]["value"] == "[REDACTED]" and env[1]["value"] == "refunds"


_FRAGMENTS = st.sampled_from(
    [
        "password",
        "PassWD",
        "token",
        "API-key",
        "access_key",
        "Authorization: ",
        "Bearer ",
        "bearer",
        "sk-",
        "AKIA",
        "eyJ",
        "-----BEGIN RSA PRIVATE KEY-----",
        "-----END",
        "credentials",
        "auth",
        "=",
        ": ",
        '"',
        " ",
        "\n",
        ",",
        "abcdefghijklmnopqrstuvwxyz0123456789",
        "ABCDEFGHIJKLMNOP",
        "hunter2",
        "replicas",
        "image: ghcr.io/acme/refund-agent:1.4.2",
        "phase Running",
        # Letters a case-insensitive match folds onto ASCII ones: long s, Kelvin sign, dotted I, sharp s.
        "\u017f",
        "\u212a",
        "\u0130",
        "\u00df",
        "pa\u017f\u017fword",
        "to\u212aen",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_FRAGMENTS, st.text(max_size=6)), max_size=14).map("".join))
def test_the_quick_check_never_skips_a_string_a_pattern_would_redact(text: str) -> None:
    assert redact_text(text) == redact_all_patterns(text)


_JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _FRAGMENTS, st.text(max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(_FRAGMENTS, st.text(max_size=6)), inner, max_size=4),
        # An env entry: a secret-looking name hides its value.
        st.fixed_dictionaries({"name": st.one_of(_FRAGMENTS, st.text(max_size=6)), "value": inner}),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_JSON_VALUES)
def test_skipping_a_document_without_secret_words_redacts_what_walking_it_would(value: object) -> None:
    assert redact(value) == redact(value, quick=False)


def test_evidence_is_bounded_by_cutting_the_oldest_log_lines_first():
    logs = {"pod-a": "\n".join(f"line {i} " + "x" * 2000 for i in range(5000))}
    parts = EvidenceParts(agent={"a": {}}, bundle={}, consumers=[], pods=[], events=[], logs=logs)
    data, truncated = build_evidence(parts, captured_at="2026-11-21T03:12:00Z", limit=200 * 1024)
    assert truncated
    assert sum(len(k) + len(v.encode()) for k, v in data.items()) <= 200 * 1024
    assert "line 4999" in data["logs.txt"] and "line 4800 " not in data["logs.txt"]  # the last 200, then cut
    assert json.loads(data["manifest.json"])["truncated"] is True


def test_evidence_documents_are_json_with_one_entry_per_line():
    parts = EvidenceParts(
        agent={"refund-agent": {"spec": {"consumers": []}}, "mailer": {"spec": {}}},
        bundle={"bundle.json": "{}"},
        consumers=[{"kind": "Deployment", "name": "worker", "spec": {"replicas": 2}}],
        pods=[{"metadata": {"name": f"worker-{i}"}, "status": {"phase": "Running"}} for i in range(3)],
        events=[],
    )
    data, _ = build_evidence(parts, captured_at="2026-11-21T03:12:00Z")
    assert list(json.loads(data["agent.json"])) == ["mailer", "refund-agent"]
    assert data["agent.json"].splitlines()[1].startswith('"mailer": ')
    pods = data["pods.json"].splitlines()
    assert len(pods) == 5 and json.loads(pods[2].rstrip(","))["name"] == "worker-1"
    assert json.loads(data["consumers.json"])[0]["spec"] == {"replicas": 2}
    assert json.loads(data["events.json"]) == []
