"""The generated CRDs: in sync with the models, accepted by Kubernetes, structural, and refusing what the
operator refuses, with the same message."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml
from celpy import celtypes
from pydantic import BaseModel, ValidationError

from tourniquet.crdgen import (
    CHART_CRD_DIR,
    CRD_DIR,
    HEADER,
    CrdError,
    build_crds,
    check_crds,
    render_crds_yaml,
    structural_schema,
    write_crds,
)
from tourniquet.models import AgentDeployment, AgentDeploymentSpec, AgentIncident, AgentIncidentSpec

ROOT = Path(__file__).resolve().parents[1]
CRDS = {crd["spec"]["names"]["kind"]: crd for crd in build_crds()}
KINDS = sorted(CRDS)


def openapi(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def spec_schema(kind: str) -> dict[str, Any]:
    node: dict[str, Any] = openapi(kind)["properties"]["spec"]
    return node


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node, with a readable path."""
    yield path or ".", node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


def all_rules() -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(kind, path, node, rule) for every x-kubernetes-validations entry."""
    for kind in KINDS:
        for path, node in walk(openapi(kind)):
            for rule in node.get("x-kubernetes-validations", []):
                yield kind, path, node, rule


# ---------------------------------------------------------------- generated files


def test_committed_crds_match_the_generator() -> None:
    assert check_crds(ROOT) == []
    for relative in render_crds_yaml():
        name = relative.removeprefix(f"{CRD_DIR}/")
        for directory in (CRD_DIR, CHART_CRD_DIR):
            committed = yaml.safe_load((ROOT / directory / name).read_text())
            assert committed == CRDS[committed["spec"]["names"]["kind"]]


def test_rendering_is_deterministic_and_marked_generated() -> None:
    first, second = render_crds_yaml(), render_crds_yaml()
    assert first == second
    assert sorted(first) == [
        "crds/tourniquet.dev_agentdeployments.yaml",
        "crds/tourniquet.dev_agentdrills.yaml",
        "crds/tourniquet.dev_agentincidents.yaml",
        "crds/tourniquet.dev_agentregressioncases.yaml",
    ]
    assert all(text.startswith(HEADER) for text in first.values())


def test_check_reports_every_drift_and_write_repairs_it(tmp_path: Path) -> None:
    written = write_crds(tmp_path)
    assert len(written) == 2 * len(KINDS) and check_crds(tmp_path) == []

    deploy = tmp_path / "crds/tourniquet.dev_agentdeployments.yaml"
    deploy.write_text(deploy.read_text().replace("maxItems: 64", "maxItems: 65"))
    (tmp_path / CHART_CRD_DIR / "tourniquet.dev_agentincidents.yaml").unlink()
    (tmp_path / "crds/tourniquet.dev_agentfleets.yaml").write_text("kind: CustomResourceDefinition\n")

    assert check_crds(tmp_path) == [
        "crds/tourniquet.dev_agentdeployments.yaml is out of date: run `tourniquet crds`",
        "charts/tourniquet/crds/tourniquet.dev_agentincidents.yaml is missing: run `tourniquet crds`",
        "crds/tourniquet.dev_agentfleets.yaml is not generated from any model: run `tourniquet crds` to delete it",
    ]
    write_crds(tmp_path)
    assert check_crds(tmp_path) == []
    assert not (tmp_path / "crds/tourniquet.dev_agentfleets.yaml").exists()


# ---------------------------------------------------------------- what Kubernetes accepts


@pytest.mark.parametrize("version", ["1.30.0", "1.33.0"])
@pytest.mark.parametrize("kind", KINDS)
def test_crd_is_a_valid_kubernetes_object(kind: str, version: str) -> None:
    kubernetes_validate.validate(CRDS[kind], version, strict=True)


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind: str) -> None:
    problems = []
    for path, node in walk(openapi(kind)):
        if not node.get("type"):
            problems.append(f"{path}: no type")
        for key in (
            "$ref",
            "$defs",
            "anyOf",
            "oneOf",
            "allOf",
            "not",
            "title",
            "default",
            "nullable",
            "const",
        ):
            if key in node:
                problems.append(f"{path}: {key}")
        extra = node.get("additionalProperties")
        if extra is not None and not isinstance(extra, dict):
            problems.append(f"{path}: additionalProperties: {extra}")
        if extra is not None and "properties" in node:
            problems.append(f"{path}: both properties and additionalProperties")
        if node.get("x-kubernetes-preserve-unknown-fields") and node.get("type") != "object":
            problems.append(f"{path}: preserves unknown fields but is not an object")
        for name in node.get("required", []):
            if name not in node.get("properties", {}):
                problems.append(f"{path}: requires the undeclared {name}")
    assert problems == []


@pytest.mark.parametrize("kind", KINDS)
def test_conditions_merge_by_type(kind: str) -> None:
    conditions = openapi(kind)["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_optional_fields_are_neither_required_nor_defaulted() -> None:
    spec = spec_schema("AgentDeployment")
    assert spec["required"] == ["podSelector", "bundle"]
    consumer = spec["properties"]["consumers"]["items"]
    assert consumer["required"] == ["name"]
    assert consumer["properties"]["kind"] == {"type": "string", "enum": ["Deployment", "StatefulSet"]}
    assert spec["properties"]["revisionHistoryLimit"] == {"type": "integer", "minimum": 1, "maximum": 100}
    window = spec_schema("AgentIncident")["properties"]["window"]["properties"]
    assert window["end"]["format"] == "date-time"


def test_models_that_cannot_be_structural_are_refused() -> None:
    class Union(BaseModel):
        value: int | str

    with pytest.raises(CrdError, match=r"Union\.value: a union of 2 schemas"):
        structural_schema(Union)


EXPECTED_NAMES = {
    "AgentDeployment": ("agentdeployments", "agentdeployment", ["agd", "agentdeploy"]),
    "AgentIncident": ("agentincidents", "agentincident", ["agi", "aincident"]),
    "AgentRegressionCase": ("agentregressioncases", "agentregressioncase", ["arc", "regressioncase"]),
    "AgentDrill": ("agentdrills", "agentdrill", ["adr", "drill"]),
}
EXPECTED_COLUMNS = {
    "AgentDeployment": [
        ("Revision", ".status.bundle.revision", "integer", 0),
        ("LastKnownGood", ".status.bundle.lastKnownGood", "integer", 0),
        ("Ready", '.status.conditions[?(@.type=="Ready")].status', "string", 0),
        ("Reason", '.status.conditions[?(@.type=="Ready")].reason', "string", 0),
        ("Contained", '.status.conditions[?(@.type=="Contained")].status', "string", 1),
        ("Readiness", ".status.readiness.summary", "string", 0),
        ("Age", ".metadata.creationTimestamp", "date", 0),
    ],
    "AgentIncident": [
        ("Agents", ".spec.agents", "string", 0),
        ("Severity", ".spec.severity", "string", 0),
        ("Class", ".spec.class", "string", 1),
        ("Phase", ".status.phase", "string", 0),
        ("Contained", '.status.conditions[?(@.type=="Contained")].status', "string", 0),
        ("Blast", ".status.blastRadius.actions", "integer", 0),
        ("Compensated", '.status.conditions[?(@.type=="Compensated")].status', "string", 1),
        ("Resolved", ".spec.resolved", "boolean", 0),
        ("Age", ".metadata.creationTimestamp", "date", 0),
    ],
    "AgentDrill": [
        ("Agent", ".spec.agent", "string", 0),
        ("Schedule", ".spec.schedule", "string", 0),
        ("Result", ".status.phase", "string", 0),
        ("Contained", ".status.lastRun.containedSeconds", "number", 0),
        ("Acknowledged", ".status.lastRun.acknowledgedSeconds", "number", 0),
        ("NextRun", ".status.nextRunAt", "string", 1),
        ("Age", ".metadata.creationTimestamp", "date", 0),
    ],
    "AgentRegressionCase": [
        ("Agent", ".spec.agent", "string", 0),
        ("Incident", ".spec.incident", "string", 0),
        ("Source", ".spec.source", "string", 1),
        ("Accepted", '.status.conditions[?(@.type=="Accepted")].status', "string", 0),
        ("Age", ".metadata.creationTimestamp", "date", 0),
    ],
}


@pytest.mark.parametrize("kind", KINDS)
def test_names_columns_and_subresources(kind: str) -> None:
    crd = CRDS[kind]
    plural, singular, short_names = EXPECTED_NAMES[kind]
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == f"{plural}.tourniquet.dev"
    assert (names["plural"], names["singular"], names["shortNames"]) == (plural, singular, short_names)
    assert names["categories"] == ["agents"]
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = [
        (c["name"], c["jsonPath"], c["type"], c.get("priority", 0))
        for c in version["additionalPrinterColumns"]
    ]
    assert columns == EXPECTED_COLUMNS[kind]
    assert openapi(kind)["required"] == ["spec"]


# ---------------------------------------------------------------- CEL

CEL = celpy.Environment()


@functools.cache
def program(rule: str) -> celpy.Runner:
    return CEL.program(CEL.compile(rule))


def test_every_model_rule_reaches_the_crd() -> None:
    def rules_in(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "x-kubernetes-validations":
                    yield from (entry["rule"] for entry in value)
                else:
                    yield from rules_in(value)
        elif isinstance(node, list):
            for value in node:
                yield from rules_in(value)

    in_models = {
        rule
        for model in (AgentDeployment, AgentIncident)
        for rule in rules_in(model.model_json_schema(by_alias=True, mode="validation"))
    }
    in_crds = {rule["rule"] for *_, rule in all_rules()}
    assert in_models == in_crds and len(in_crds) >= 8


@pytest.mark.parametrize(
    ("kind", "path", "rule"), [(kind, path, rule["rule"]) for kind, path, _, rule in all_rules()]
)
def test_cel_rule_compiles(kind: str, path: str, rule: str) -> None:
    program(rule)


_FIELD = re.compile(r"\.([A-Za-z_]\w*)\b(?!\s*\()")
_HAS = re.compile(r"has\([^)]*\)")  # a presence test costs the same whatever the field holds


def fields_read(rule: str) -> set[str]:
    return set(_FIELD.findall(_HAS.sub("", rule)))


def unbounded(node: dict[str, Any], fields: set[str], path: str) -> list[str]:
    """Lists and strings a rule reads that have no bound for the API server's cost estimate."""
    if node["type"] == "array":
        missing = [] if "maxItems" in node else [path]
        return missing + unbounded(node["items"], fields, f"{path}[]")
    if node["type"] == "string":
        bounded = "maxLength" in node or "enum" in node or node.get("format") == "date-time"
        return [] if bounded else [path]
    return [
        problem
        for name, child in node.get("properties", {}).items()
        if name in fields
        for problem in unbounded(child, fields, f"{path}.{name}")
    ]


def test_everything_a_cel_rule_reads_is_bounded() -> None:
    """A real API server refuses a CRD whose estimated CEL cost is too high; unbounded inputs are the cause.

    Conservative: any list or string under the rule's node whose name the rule mentions must be bounded.
    """
    problems = [
        f"{kind} {path}: {problem} (read by {rule['rule']!r})"
        for kind, path, node, rule in all_rules()
        for problem in unbounded(node, fields_read(rule["rule"]), path)
    ]
    assert problems == []


def to_cel(node: dict[str, Any], value: Any) -> Any:
    """A JSON value as the API server hands it to CEL: typed by the schema (date-time is a timestamp)."""
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return celpy.json_to_cel(value)
    match node["type"]:
        case "object":
            properties = node.get("properties", {})
            return celtypes.MapType(
                {
                    celtypes.StringType(key): to_cel(
                        properties.get(key) or node["additionalProperties"], item
                    )
                    for key, item in value.items()
                    if key in properties or "additionalProperties" in node  # the API server prunes the rest
                }
            )
        case "array":
            return celtypes.ListType([to_cel(node["items"], item) for item in value])
        case "string" if node.get("format") == "date-time":
            return celtypes.TimestampType(value)
        case "string":
            return celtypes.StringType(value)
        case "integer":
            return celtypes.IntType(value)
        case "number":
            return celtypes.DoubleType(value)
        case "boolean":
            return celtypes.BoolType(value)
    raise AssertionError(f"untyped node {node}")


def cel_failures(node: dict[str, Any], value: Any) -> list[str]:
    """The messages of every CEL rule the value breaks, evaluated at each node as the API server does."""
    failures = []
    for rule in node.get("x-kubernetes-validations", []):
        try:
            result = program(rule["rule"]).evaluate({"self": to_cel(node, value)})
        except celpy.CELEvalError as error:
            result = error
        if isinstance(result, celpy.CELEvalError):
            failures.append(f"error in {rule['rule']!r}: {result}")
        elif not result:
            failures.append(rule["message"])
    if isinstance(value, dict):
        for key, item in value.items():
            child = node.get("properties", {}).get(key) or node.get("additionalProperties")
            if isinstance(child, dict):
                failures += cel_failures(child, item)
    if isinstance(value, list) and "items" in node:
        for item in value:
            failures += cel_failures(node["items"], item)
    return failures


def as_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """The structural schema as JSON Schema, unknown fields refused (kubectl's strict field validation)."""
    out = {key: value for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if "properties" in node:
        out["properties"] = {name: as_json_schema(child) for name, child in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out[key] = as_json_schema(node[key])
    return out


def schema_errors(kind: str, spec: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(as_json_schema(spec_schema(kind)))
    return [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(spec)
    ]


# ---------------------------------------------------------------- one table, three validators

AGENT_DEPLOYMENT: dict[str, Any] = {
    "consumers": [{"kind": "Deployment", "name": "refund-agent-worker"}, {"name": "refund-agent-batch"}],
    "podSelector": {"matchLabels": {"app": "refund-agent"}},
    "bundle": {
        "model": {"provider": "openai", "name": "gpt-5", "version": "2026-08-06"},
        "prompt": {"template": "You are the refund assistant."},
        "tools": [
            {
                "name": "issue_refund",
                "schema": {"type": "object", "properties": {"amount": {"type": "number"}}},
                "egress": [{"cidr": "10.20.0.0/16", "ports": [443]}],
                "sideEffects": "write",
                "compensation": {"type": "reversal", "tool": "reverse_refund"},
            },
            {
                "name": "send_email",
                "compensation": {"type": "mitigation", "description": "send a correction"},
            },
            {"name": "lookup_order", "sideEffects": "read", "compensation": {}},
        ],
    },
    "dependsOn": [{"name": "pricing-agent"}],
    "detection": {
        "intervalSeconds": 30,
        "rules": [
            {"name": "retry-storm", "template": "retryStorm", "params": {"threshold": 5}},
            {"name": "refund-surge", "expr": "rate(refunds_total[5m]) > 3", "for": "2m", "severity": "SEV1"},
        ],
    },
    "response": {"SEV1": {"contain": ["revokeTools", "drain"], "rollback": "lastKnownGood"}, "SEV3": {}},
    "rollback": {"revision": 6},
    "revisionHistoryLimit": 5,
}
AGENT_INCIDENT: dict[str, Any] = {
    "agents": ["refund-agent", "pricing-agent"],
    "severity": "SEV1",
    "class": "tool-misuse",
    "contain": ["revokeTools", "drain"],
    "revokeTools": ["issue_refund"],
    "rollback": {"to": "lastKnownGood"},
    "window": {"start": "2026-11-21T03:02:00Z", "end": "2026-11-21T03:12:00Z"},
    "compensate": {"approved": False},
}
MINIMAL_DEPLOYMENT = {
    "podSelector": {},
    "bundle": {k: AGENT_DEPLOYMENT["bundle"][k] for k in ("model", "prompt")},
}


def patched(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `base` with the value at a dotted path (list indices as numbers) replaced."""
    doc = copy.deepcopy(base)
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    target: Any = doc
    for part in parents:
        target = target[part]
    target[last] = value
    return doc


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    spec: dict[str, Any]
    message: str | None = None  # None: valid everywhere
    # Who else refuses it: "cel" (a rule, same message), "schema" (OpenAPI), "operator" (pydantic only).
    refused_by: str = "cel"


def agd(case_id: str, path: str, value: Any, message: str | None = None, refused_by: str = "cel") -> Case:
    return Case(case_id, "AgentDeployment", patched(AGENT_DEPLOYMENT, path, value), message, refused_by)


def agi(case_id: str, path: str, value: Any, message: str | None = None, refused_by: str = "cel") -> Case:
    return Case(case_id, "AgentIncident", patched(AGENT_INCIDENT, path, value), message, refused_by)


FLOATING = (
    "pin an exact model version; a floating version makes rollback impossible (pinned: a date such as "
    "2026-08-06 or 20260806, alone or ending the model id, as in gpt-4o-2024-08-06 or "
    "anthropic.claude-3-5-sonnet-20240620-v1:0; a digest sha256:<64 hex>; a 40-hex commit; for google or "
    "vertex-ai also a stable number such as 002; for mistral a YYMM release such as 2407)"
)
CASES = [
    # valid
    Case("deployment-full", "AgentDeployment", AGENT_DEPLOYMENT),
    Case("deployment-minimal", "AgentDeployment", MINIMAL_DEPLOYMENT),
    agd("rollback-to-last-known-good", "rollback", {"to": "lastKnownGood"}),
    agd("same-name-other-kind", "consumers", [{"name": "worker"}, {"kind": "StatefulSet", "name": "worker"}]),
    agd("version-mentioning-latest", "bundle.model.version", "latest-2026-08-06"),
    Case("incident-full", "AgentIncident", AGENT_INCIDENT),
    Case("incident-minimal", "AgentIncident", {"agents": ["refund-agent"], "severity": "SEV3"}),
    # refused by pydantic and by a CEL rule, with the same message
    agd("floating-latest", "bundle.model.version", "latest", FLOATING),
    agd("floating-any-case", "bundle.model.version", "Stable", FLOATING),
    agd("floating-padded", "bundle.model.version", " latest\t", FLOATING),
    agd("floating-suffix", "bundle.model.version", "gpt-4o-latest", FLOATING),
    agd("floating-star", "bundle.model.version", "*", FLOATING),
    # a bare family name or a moving tag is not pinned, whatever the provider
    agd("family-name", "bundle.model.version", "gpt-5", FLOATING),
    agd("tag-v1", "bundle.model.version", "v1", FLOATING),
    agd("bare-number", "bundle.model.version", "1", FLOATING),
    agd("not-a-date", "bundle.model.version", "2026-13-01", FLOATING),
    agd("date-with-a-newline", "bundle.model.version", "2026-08-06\n", FLOATING),
    agd("short-digest", "bundle.model.version", "sha256:abc123", FLOATING),
    agd("google-number-elsewhere", "bundle.model", {"provider": "openai", "name": "gpt-5", "version": "002"}, FLOATING),
    agd(
        "google-family", "bundle.model", {"provider": "google", "name": "gemini", "version": "gemini-2.5-pro"}, FLOATING
    ),
    # pinned forms: a date (alone, or ending the model id), a digest, a commit; per provider, its own
    agd("dated-compact", "bundle.model", {"provider": "anthropic", "name": "claude", "version": "20250514"}),
    agd("dated-model-id", "bundle.model.version", "gpt-4o-2024-08-06"),
    agd(
        "bedrock-id",
        "bundle.model",
        {"provider": "bedrock", "name": "claude", "version": "anthropic.claude-3-5-sonnet-20240620-v1:0"},
    ),
    agd("digest", "bundle.model.version", "sha256:" + "ab" * 32),
    agd("commit", "bundle.model", {"provider": "huggingface", "name": "llama", "version": "0f3a" * 10}),
    agd("google-stable-number", "bundle.model", {"provider": "Google", "name": "gemini", "version": "002"}),
    agd("vertex-model-id", "bundle.model", {"provider": "vertex-ai", "name": "g", "version": "gemini-2.0-flash-001"}),
    agd("mistral-release", "bundle.model", {"provider": "mistral", "name": "large", "version": "mistral-large-2407"}),
    agd("duplicate-tools", "bundle.tools.2.name", "issue_refund", "tool names must be unique"),
    agd(
        "duplicate-consumers-defaulted-kind",
        "consumers.1.name",
        "refund-agent-worker",
        "consumers must be unique",
    ),
    agd(
        "reversal-without-tool",
        "bundle.tools.0.compensation",
        {"type": "reversal"},
        "a reversal names the tool that undoes the action",
    ),
    agd(
        "rollback-revision-and-to",
        "rollback",
        {"revision": 6, "to": "lastKnownGood"},
        "set exactly one of rollback.revision or rollback.to",
    ),
    agd("rollback-neither", "rollback", {}, "set exactly one of rollback.revision or rollback.to"),
    agd("rule-expr-and-template", "detection.rules.0.expr", "up == 0", "set exactly one of expr or template"),
    agd("rule-neither", "detection.rules.1", {"name": "nothing"}, "set exactly one of expr or template"),
    agi(
        "incident-rollback-revision-and-to",
        "rollback",
        {"revision": 6, "to": "lastKnownGood"},
        "set exactly one of rollback.revision or rollback.to",
    ),
    agi("duplicate-agents", "agents", ["refund-agent", "refund-agent"], "agents must be unique"),
    agi(
        "approval-without-plan-hash",
        "compensate",
        {"approved": True, "duplicatesOnly": True},
        "an approval names the plan it approves: set planHash (kubectl tourniquet compensate shows it)",
    ),
    agi("approval-with-plan-hash", "compensate", {"approved": True, "planHash": "ab" * 32}),
    agd("ledger-secret", "ledger", {"secretRef": {"name": "refund-ledger"}}),
    # refused by pydantic and by the OpenAPI schema
    agd("unknown-field", "replicas", 3, "Extra inputs are not permitted", "schema"),
    agd("unknown-nested-field", "bundle.model.temperature", 0.2, "Extra inputs are not permitted", "schema"),
    agd(
        "too-many-tools",
        "bundle.tools",
        [{"name": f"tool{i}"} for i in range(65)],
        "List should have at most 64 items",
        "schema",
    ),
    agd(
        "bad-consumer-kind",
        "consumers.0.kind",
        "DaemonSet",
        "Input should be 'Deployment' or 'StatefulSet'",
        "schema",
    ),
    agi("empty-agents", "agents", [], "List should have at least 1 item", "schema"),
    agi("unknown-severity", "severity", "SEV4", "Input should be 'SEV1', 'SEV2' or 'SEV3'", "schema"),
    agi(
        "bad-agent-name",
        "agents",
        ["Refund_Agent"],
        "'Refund_Agent' is not a valid AgentDeployment name",
        "schema",
    ),
    agi("bad-tool-name", "revokeTools", ["1refund"], "'1refund' is not a valid tool name", "schema"),
    # refused by the operator only (reported as a condition): Kubernetes 1.30 CEL has no portable CIDR check
    agd(
        "bad-cidr",
        "bundle.tools.0.egress.0.cidr",
        "10.20.0.0/33",
        "'10.20.0.0/33' is not a CIDR such as 10.20.0.0/16",
        "operator",
    ),
]
MODELS: dict[str, type[BaseModel]] = {
    "AgentDeployment": AgentDeploymentSpec,
    "AgentIncident": AgentIncidentSpec,
}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_pydantic_cel_and_schema_agree(case: Case) -> None:
    model = MODELS[case.kind]
    errors, failures = schema_errors(case.kind, case.spec), cel_failures(spec_schema(case.kind), case.spec)
    if case.message is None:
        model.model_validate(case.spec)
        assert (errors, failures) == ([], [])
        return

    with pytest.raises(ValidationError, match=re.escape(case.message)):
        model.model_validate(case.spec)
    if case.refused_by == "cel":
        assert errors == []
        assert failures == [case.message]
    elif case.refused_by == "schema":
        assert errors != []
    else:
        assert (errors, failures) == ([], [])


@pytest.mark.parametrize(
    ("end", "refused"),
    [("2026-11-21T03:01:59Z", True), ("2026-11-21T03:02:00Z", False), ("2026-11-21T04:02:00+01:00", False)],
)
def test_window_rule_compares_times_not_strings(end: str, refused: bool) -> None:
    spec = patched(AGENT_INCIDENT, "window.end", end)
    expected = ["window.end must not be before window.start"] if refused else []
    assert cel_failures(spec_schema("AgentIncident"), spec) == expected
