"""Custom resource validation, pruning and defaulting, without a server (crvalidate is pure)."""

from __future__ import annotations

from typing import Any

import pytest

from kubemu.crvalidate import (
    apply_defaults,
    check_schema,
    find_errors,
    prune_unknown_fields,
    to_json_schema,
    validate_custom_resource,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["model"],
            "properties": {
                "replicas": {"type": "integer", "minimum": 0, "maximum": 5},
                "mode": {"type": "string", "enum": ["patch", "scale"], "default": "patch"},
                "port": {"x-kubernetes-int-or-string": True},
                "note": {"type": "string", "nullable": True, "maxLength": 5},
                "name": {"type": "string", "pattern": "^[a-z]+$"},
                "ratio": {
                    "type": "number",
                    "x-kubernetes-validations": [
                        {"rule": "self > 0.5", "message": "ratio must exceed one half"}
                    ],
                },
                "since": {"type": "string", "format": "date-time"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "template": {
                    "type": "object",
                    "x-kubernetes-embedded-resource": True,
                    "properties": {"spec": {"type": "object", "properties": {"x": {"type": "integer"}}}},
                },
                "tags": {
                    "type": "array",
                    "minItems": 1,
                    "x-kubernetes-list-type": "set",
                    "maxItems": 3,
                    "items": {"type": "string"},
                },
                "model": {
                    "type": "object",
                    "required": ["version"],
                    "properties": {
                        "version": {
                            "type": "string",
                            "x-kubernetes-validations": [
                                {
                                    "rule": "!self.matches('^(latest|stable)$')",
                                    "message": "pin an exact model version; "
                                    "a floating version makes rollback impossible",
                                }
                            ],
                        }
                    },
                },
                "consumers": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "weight": {"type": "integer", "default": 1},
                        },
                    },
                },
                "owner": {
                    "type": "string",
                    "x-kubernetes-validations": [
                        {"rule": "self == oldSelf", "message": "owner is immutable"}
                    ],
                },
            },
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.replicas) || self.replicas <= 3 || self.mode == 'scale'",
                    "messageExpression": "'replicas ' + string(self.replicas) + ' need mode=scale'",
                },
                {
                    "rule": "!has(self.consumers) || self.consumers.all(c, !has(c.name) || c.name != 'root')",
                    "message": "root is reserved",
                    "fieldPath": ".consumers",
                    "reason": "FieldValueForbidden",
                },
            ],
        },
        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
    },
}


SKIPPED = (
    '<nil>: Invalid value: "null": some validation rules were not checked because the object was invalid; '
    "correct the existing errors to complete validation"
)


def valid(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "x.dev/v1",
        "kind": "Thing",
        "metadata": {"name": "t"},
        "spec": {"model": {"version": "2025-01-01"}, **spec},
    }


def test_a_valid_object_has_no_errors() -> None:
    assert (
        validate_custom_resource(
            SCHEMA,
            valid(
                replicas=2, port="http", note=None, ratio=0.9, since="2025-01-01T00:00:00Z", tags=["a", "b"]
            ),
        )
        == []
    )


@pytest.mark.parametrize(
    "spec, error",
    [
        (
            {"replicas": 9, "mode": "scale"},
            "spec.replicas: Invalid value: 9: spec.replicas in body should be less than or equal to 5",
        ),
        (
            {"replicas": -1},
            "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
        ),
        (
            {"replicas": "two"},
            'spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string"',
        ),
        (
            {"mode": "sideways"},
            'spec.mode: Unsupported value: "sideways": supported values: "patch", "scale"',
        ),
        (
            {"port": True},
            'spec.port: Invalid value: "boolean": '
            'spec.port in body must be of type integer,string: "boolean"',
        ),
        ({"note": "too long"}, "spec.note: Too long: may not be more than 5 bytes"),
        ({"name": "UPPER"}, "spec.name: Invalid value: \"UPPER\": spec.name in body should match '^[a-z]+$'"),
        ({"ratio": 0.1}, "spec.ratio: Invalid value: 0.1: ratio must exceed one half"),
        ({"ratio": 1}, None),  # an integer in a number field is a double for CEL
        (
            {"since": "yesterday"},
            'spec.since: Invalid value: "yesterday": '
            'spec.since in body must be of type date-time: "yesterday"',
        ),
        (
            {"labels": {"a": 1}},
            'spec.labels.a: Invalid value: "integer": '
            'spec.labels.a in body must be of type string: "integer"',
        ),
        ({"tags": ["a", "a"]}, 'spec.tags[1]: Duplicate value: "a"'),
        ({"tags": []}, "spec.tags: Invalid value: 0: spec.tags in body should have at least 1 items"),
        ({"tags": ["a", "b", "c", "d"]}, "spec.tags: Too many: 4: must have at most 3 items"),
        ({"consumers": [{"name": "x"}, {"name": "x"}]}, 'spec.consumers[1]: Duplicate value: {"name":"x"}'),
        ({"consumers": [{"weight": 2}]}, "spec.consumers[0].name: Required value"),
        ({"consumers": [{"name": "root"}]}, "spec.consumers: Forbidden: root is reserved"),
        (
            {"model": {"version": "latest"}},
            'spec.model.version: Invalid value: "latest": pin an exact model version; '
            "a floating version makes rollback impossible",
        ),
        ({"model": {}}, "spec.model.version: Required value"),
        ({"replicas": 4}, 'spec: Invalid value: "object": replicas 4 need mode=scale'),
        (
            {"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": "y"}}},
            'spec.template.spec.x: Invalid value: "string": '
            'spec.template.spec.x in body must be of type integer: "string"',
        ),
        ({"free": {"anything": {"goes": [1, "two"]}}}, None),
    ],
)
def test_field_errors(spec: dict[str, Any], error: str | None) -> None:
    errors = validate_custom_resource(SCHEMA, valid(**spec))
    assert [e for e in errors if e != SKIPPED] == ([error] if error else [])


@pytest.mark.parametrize(
    "spec, blocking",
    [
        ({"replicas": "two"}, True),
        ({"mode": "x"}, True),
        ({"note": "too long"}, True),
        ({"model": {}}, True),
        ({"tags": ["a", "b", "c", "d"]}, True),
        ({"replicas": 9, "mode": "scale"}, False),
        ({"name": "UP"}, False),
    ],
)
def test_cel_rules_are_skipped_after_blocking_errors(spec: dict[str, Any], blocking: bool) -> None:
    errors = validate_custom_resource(SCHEMA, valid(**spec))
    assert (SKIPPED in errors) is blocking


def test_all_errors_are_reported_with_causes() -> None:
    errors = find_errors(SCHEMA, valid(replicas=9, mode="x", consumers=[{}]))
    assert [(e.path, e.reason) for e in errors] == [
        ("spec.replicas", "FieldValueInvalid"),
        ("spec.mode", "FieldValueNotSupported"),
        ("spec.consumers[0].name", "FieldValueRequired"),
        ("", "FieldValueInvalid"),  # the CEL rules were not evaluated
    ]
    assert errors[2].message == "Required value"
    errors = find_errors(SCHEMA, valid(replicas=9, ratio=0.1))
    assert [str(e) for e in errors] == [
        "spec.replicas: Invalid value: 9: spec.replicas in body should be less than or equal to 5",
        'spec: Invalid value: "object": replicas 9 need mode=scale',
        "spec.ratio: Invalid value: 0.1: ratio must exceed one half",
    ]


def test_missing_required_section() -> None:
    assert validate_custom_resource(SCHEMA, {"spec": {}}) == ["spec.model: Required value", SKIPPED]


def test_transition_rules_need_the_old_object() -> None:
    new = valid(owner="b")
    assert validate_custom_resource(SCHEMA, new) == []  # create: oldSelf rules are skipped
    assert validate_custom_resource(SCHEMA, new, old=valid(owner="a")) == [
        'spec.owner: Invalid value: "b": owner is immutable'
    ]
    assert validate_custom_resource(SCHEMA, new, old=valid(owner="b")) == []
    assert validate_custom_resource(SCHEMA, new, old=valid()) == []  # the field is new: no transition


def test_updates_ratchet_unchanged_values() -> None:
    stored = valid(replicas=4, mode="patch")  # invalid under the current rules (stored before them)
    assert validate_custom_resource(SCHEMA, stored) != []
    with_status = {**stored, "status": {"phase": "Ready"}}
    assert validate_custom_resource(SCHEMA, with_status, old=stored) == []  # spec unchanged: not re-checked
    changed = valid(replicas=5, mode="patch")
    assert validate_custom_resource(SCHEMA, changed, old=stored) == [
        'spec: Invalid value: "object": replicas 5 need mode=scale'
    ]


def test_updates_check_only_what_changed_but_all_of_it() -> None:
    stored = valid(replicas=2)
    assert validate_custom_resource(
        SCHEMA, {**stored, "spec": {**stored["spec"], "mode": "x"}}, old=stored
    ) == [
        'spec.mode: Unsupported value: "x": supported values: "patch", "scale"',
        SKIPPED,
    ]
    assert validate_custom_resource(SCHEMA, {**stored, "status": {"phase": 1}}, old=stored) == [
        'status.phase: Invalid value: "integer": status.phase in body must be of type string: "integer"',
        SKIPPED,
    ]
    without_spec = {key: value for key, value in stored.items() if key != "spec"}
    schema = {**SCHEMA, "required": ["spec"]}
    assert validate_custom_resource(schema, without_spec, old=stored) == ["spec: Required value", SKIPPED]
    pruned, unknown = prune_unknown_fields(SCHEMA, {**stored, "spec": {**stored["spec"], "bogus": 1}})
    assert unknown == ["spec.bogus"] and "bogus" not in pruned["spec"]


def test_cached_rule_outcomes_keep_their_own_paths() -> None:
    consumer = {"name": "root"}
    first = validate_custom_resource(SCHEMA, valid(consumers=[consumer]))
    second = validate_custom_resource(SCHEMA, valid(consumers=[{"name": "ok"}, consumer][1:]))
    assert first == second == ["spec.consumers: Forbidden: root is reserved"]
    assert validate_custom_resource(SCHEMA, valid(consumers=[{"name": "fine"}])) == []


def test_rules_reading_absent_fields_fail_like_the_api_server() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {"a": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "self.a > 1"}],
            }
        },
    }
    assert validate_custom_resource(schema, {"spec": {}}) == [
        'spec: Invalid value: "object": no such key: a evaluating rule: self.a > 1'
    ]
    assert validate_custom_resource(schema, {"spec": {"a": 0}}) == [
        'spec: Invalid value: "object": failed rule: self.a > 1'
    ]


def test_kubernetes_string_and_list_functions() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "items": {"type": "array", "items": {"type": "string"}},
                },
                "x-kubernetes-validations": [
                    {"rule": "self.name.lowerAscii() == self.name", "message": "lowercase"},
                    {"rule": "self.items.join(',').size() < 10", "message": "short"},
                    {"rule": "self.name.split('-').size() <= 2", "message": "one dash"},
                    {
                        "rule": 'self.items.exists_one(i, i == "x") && size(self.items) >= 1 '
                        '&& "x" in self.items && self.items.exists(i, i.startsWith("x"))',
                        "message": "one x",
                    },
                ],
            }
        },
    }
    assert validate_custom_resource(schema, {"spec": {"name": "a-b", "items": ["x", "y"]}}) == []
    errors = validate_custom_resource(schema, {"spec": {"name": "A-b-c", "items": ["x", "x", "long-item"]}})
    assert [e.rsplit(": ", 1)[1] for e in errors] == ["lowercase", "short", "one dash", "one x"]


def test_strict_reports_unknown_fields() -> None:
    obj = valid(extra=1)
    assert validate_custom_resource(SCHEMA, obj) == []
    assert validate_custom_resource(SCHEMA, obj, strict=True) == ["spec.extra: field not declared in schema"]


def test_pruning_keeps_declared_and_preserved_fields() -> None:
    obj = valid(
        extra=1,
        free={"kept": True},
        labels={"a": "b"},
        note=None,
        replicas=None,
        template={"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1, "y": 2}},
    )
    obj["status"] = {"phase": "Ready", "bogus": 1}
    obj["unknownTop"] = 1
    pruned, unknown = prune_unknown_fields(SCHEMA, obj)
    assert unknown == ["spec.extra", "spec.template.spec.y", "status.bogus", "unknownTop"]
    assert pruned["spec"]["free"] == {"kept": True}
    assert pruned["spec"]["note"] is None  # nullable: kept
    assert "replicas" not in pruned["spec"]  # a null in a non-nullable field is dropped
    assert pruned["spec"]["template"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"x": 1},
    }
    assert pruned["metadata"] == {"name": "t"} and "extra" in obj["spec"]  # the input is not modified


def test_defaults_fill_absent_fields_inside_existing_objects() -> None:
    obj = valid(consumers=[{"name": "a"}, {"name": "b", "weight": 5}])
    defaulted = apply_defaults(SCHEMA, obj)
    assert defaulted["spec"]["mode"] == "patch"
    assert [c["weight"] for c in defaulted["spec"]["consumers"]] == [1, 5]
    assert "mode" not in obj["spec"]  # the input is not modified
    assert apply_defaults(SCHEMA, {"metadata": {}}) == {"metadata": {}}  # no spec: nothing to default into


def test_translation_to_json_schema() -> None:
    translated = to_json_schema({"type": "integer", "nullable": True, "minimum": 1, "exclusiveMinimum": True})
    assert translated == {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": ["integer", "null"],
        "exclusiveMinimum": 1,
    }


def test_check_schema_reports_cel_syntax_errors() -> None:
    schema = {
        "type": "object",
        "x-kubernetes-validations": [{"rule": "self.x >"}],
        "properties": {"a": {"type": "string", "x-kubernetes-validations": [{"rule": 'self != ""'}]}},
    }
    assert check_schema(schema) == [
        'openAPIV3Schema.x-kubernetes-validations[0].rule: Invalid value: "self.x >": '
        "compilation failed: syntax error at column 8"
    ]
