"""
Validate custom resources against a CRD's structural schema, as the API server does.

This module is pure (no HTTP, no KMock): it takes the ``openAPIV3Schema`` of one CRD version and
an object, and answers what a Kubernetes API server would answer. The sandbox emulator uses it on
every write of a custom resource; tests and the CLI can use it directly on example manifests.

What is covered:

* the OpenAPI v3 keywords a structural schema may use (``type``, ``properties``, ``required``,
  ``additionalProperties``, ``items``, ``enum``, ``pattern``, ``minLength``/``maxLength``,
  ``minimum``/``maximum`` and their exclusive forms, ``minItems``/``maxItems``, ``uniqueItems``,
  ``minProperties``/``maxProperties``, ``multipleOf``, ``allOf``/``anyOf``/``oneOf``/``not``),
  translated to JSON Schema Draft 2020-12 and checked with ``jsonschema``;
* the Kubernetes extensions ``nullable``, ``x-kubernetes-int-or-string``,
  ``x-kubernetes-preserve-unknown-fields``, ``x-kubernetes-embedded-resource`` and
  ``x-kubernetes-list-type`` (``set`` and ``map`` uniqueness);
* ``format``: ``date-time``, ``date``, ``uuid``, ``byte``, ``int32``, ``int64`` and whatever
  ``jsonschema.FormatChecker`` knows; unknown formats pass, as on a real server;
* ``x-kubernetes-validations`` CEL rules, evaluated with cel-python 0.5.0, with ``message``,
  ``messageExpression``, ``fieldPath`` and ``reason``; ``self`` is bound to the node the rule sits on,
  and transition rules (those using ``oldSelf``) run only when an old object is given;
* validation ratcheting (Kubernetes 1.30+): on updates, values that did not change are not
  re-validated, so an object stored before a stricter schema can still get its status written;
* pruning of unknown fields (:func:`prune_unknown_fields`) and defaulting (:func:`apply_defaults`).

What is not covered: the Kubernetes-specific CEL libraries beyond a few string and list helpers
(``quantity()``, ``url()``, ``ip()``, ``cidr()``, ``authz`` are unknown, and rules using them fail at
evaluation with a message saying so) and the CEL cost budget.

Error messages follow the API server's ``field.Error`` format, ``<path>: <reason>``::

    spec.consumers[0].name: Required value
    spec.replicas: Invalid value: 10: spec.replicas in body should be less than or equal to 5
    spec.bundle.model.version: Invalid value: "latest": pin an exact model version; ...

One deliberate difference: for a failing CEL rule the real server prints the node's *type*
(``Invalid value: "string"``); this module prints the node's *value*, which is what a person
fixing the manifest needs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import celpy
import jsonschema

from kubemu.cel import _OutcomeCache, _parse_error, _programs, _walk_validations
from kubemu.fielderrors import _BLOCKING, _CEL_SKIPPED, FieldError, _translate_error
from kubemu.structural import (
    _OBJECT_ROOT_FIELDS,
    _format_checker,
    _unchanged,
    apply_defaults,
    prune_unknown_fields,
    to_json_schema,
)

if TYPE_CHECKING:
    from kubemu.fielderrors import Schema


__all__ = [
    "FieldError",
    "SchemaValidator",
    "apply_defaults",
    "check_schema",
    "find_errors",
    "prune_unknown_fields",
    "to_json_schema",
    "validate_custom_resource",
]


class SchemaValidator:
    """
    One CRD version's schema, compiled once, validating objects the way the API server does.

    The API server prunes unknown fields, applies defaults, checks the OpenAPI schema, and only then
    evaluates the CEL rules, unless the object has errors that make CEL evaluation meaningless
    (wrong types, unsupported enum values): then it says so instead.
    """

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.json_schema = to_json_schema(schema)
        self._validator = jsonschema.Draft202012Validator(self.json_schema, format_checker=_format_checker)
        self._sections: dict[str, jsonschema.protocols.Validator] = {}
        self._outcomes = _OutcomeCache()
        # Updates can be checked section by section (spec, status, ...) when the root schema is
        # nothing but properties: the sections that did not change need no re-validation.
        root_keywords = set(self.json_schema) - {"$schema", "type", "properties", "required"}
        props = schema.get("properties")
        self._sectioned = isinstance(props, Mapping) and not root_keywords and schema.get("type") == "object"

    def _changed(self, obj: Any, old: Any) -> list[str] | None:
        """The top-level sections that differ from ``old``, or None when the whole object must be checked."""
        if not self._sectioned or not isinstance(obj, Mapping) or not isinstance(old, Mapping):
            return None
        return [key for key in obj if key not in old or old[key] != obj[key]]

    def prepare(self, obj: Any, *, old: Any = None) -> tuple[Any, list[str]]:
        """Prune and default ``obj`` (a copy) as on write; return it and the paths of the pruned fields."""
        changed = self._changed(obj, old)
        if changed is None:
            pruned, unknown = prune_unknown_fields(self.schema, obj)
            return apply_defaults(self.schema, pruned), unknown
        pruned, unknown = prune_unknown_fields(self.schema, {key: obj[key] for key in changed})
        defaulted = apply_defaults(self.schema, pruned)
        result: dict[str, Any] = {}
        for key, value in obj.items():
            if key not in changed:
                result[key] = value  # as stored: already pruned and defaulted
            elif key in defaulted:
                result[key] = defaulted[key]
        for key, value in defaulted.items():
            result.setdefault(key, value)  # new top-level defaults
        return result, unknown

    def validate(self, obj: Any, *, old: Any = None) -> list[FieldError]:
        """The errors of an already prepared object (and of the transition from ``old``, if given)."""
        errors: list[FieldError] = []
        changed = self._changed(obj, old)
        if changed is None:
            checked = obj
            if isinstance(obj, Mapping):
                # apiVersion/kind/metadata are the API server's business, not the schema's.
                declared = self.schema.get("properties") or {}
                checked = {key: val for key, val in obj.items() if key not in _OBJECT_ROOT_FIELDS or key in declared}
            for error in self._validator.iter_errors(checked):
                if old is not None and _unchanged(obj, old, list(error.absolute_path)):
                    continue  # ratcheting: a value that did not change is not re-validated
                errors.extend(_translate_error(error))
        else:
            props = self.json_schema["properties"]
            for key in self.json_schema.get("required", ()):
                if key not in obj and key in old:
                    errors.append(FieldError(key, "Required"))
            for key in changed:
                if key not in props:
                    continue
                if key not in self._sections:
                    self._sections[key] = jsonschema.Draft202012Validator(
                        {"$schema": self.json_schema["$schema"], **props[key]}, format_checker=_format_checker
                    )
                for error in self._sections[key].iter_errors(obj[key]):
                    if not _unchanged(obj, old, [key, *error.absolute_path]):
                        errors.extend(_translate_error(error, (key,)))
        if any(error.type in _BLOCKING for error in errors):
            errors.append(FieldError("", "Invalid", "null", _CEL_SKIPPED))
        else:
            _walk_validations(self.schema, obj, old, "", old is not None, errors, self._outcomes)
        unique: dict[str, FieldError] = {}
        for error in errors:
            unique.setdefault(str(error), error)
        return list(unique.values())

    def errors(self, obj: Any, *, old: Any = None, strict: bool = False) -> list[FieldError]:
        """Prune, default and validate ``obj``; with ``strict``, unknown fields are errors too."""
        prepared, unknown = self.prepare(obj, old=old)
        errors = [FieldError(path, "Unknown") for path in unknown] if strict else []
        return errors + self.validate(prepared, old=old)


class _ValidatorCache:
    def __init__(self, limit: int = 64) -> None:
        self._items: OrderedDict[int, SchemaValidator] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, schema: Schema) -> SchemaValidator:
        with self._lock:
            cached = self._items.get(id(schema))
            if cached is not None and cached.schema is schema:  # the strong ref prevents id() reuse
                self._items.move_to_end(id(schema))
                return cached
            validator = SchemaValidator(schema)
            self._items[id(schema)] = validator
            if len(self._items) > self._limit:
                self._items.popitem(last=False)
            return validator


_validators = _ValidatorCache()


def find_errors(schema: Schema, obj: Any, *, strict: bool = False, old: Any = None) -> list[FieldError]:
    """Like :func:`validate_custom_resource`, but return structured :class:`FieldError` objects."""
    return _validators.get(schema).errors(obj, old=old, strict=strict)


def validate_custom_resource(schema: Schema, obj: Any, *, strict: bool = False, old: Any = None) -> list[str]:
    """
    Validate a custom resource against its CRD version's ``openAPIV3Schema``.

    As on the API server, the object is first pruned (:func:`prune_unknown_fields`) and defaulted
    (:func:`apply_defaults`), then checked. Returns every error (not only the first) as
    ``<path>: <reason>`` lines; an empty list means the object is valid. With ``strict=True``,
    fields the schema does not declare are errors (``spec.foo: field not declared in schema``), as
    with ``fieldValidation=Strict``; otherwise they are silently dropped, as the server does.
    With ``old``, CEL transition rules (``oldSelf``) are evaluated too; without it they are skipped,
    as on create. Compiled schemas and CEL programs are cached across calls.
    """
    return [str(error) for error in find_errors(schema, obj, strict=strict, old=old)]


def _walk_schemas(schema: Any, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if not isinstance(schema, Mapping):
        return
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from _walk_schemas(sub, f"{path}.properties[{key}]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from _walk_schemas(schema["additionalProperties"], f"{path}.additionalProperties")
    if isinstance(schema.get("items"), Mapping):
        yield from _walk_schemas(schema["items"], f"{path}.items")


def check_schema(schema: Schema, path: str = "openAPIV3Schema") -> list[str]:
    """
    Check a schema the way the API server checks a CRD: today, that every CEL rule compiles.

    Returns ``<path>: Invalid value: ...: compilation failed: ...`` lines (empty when fine).
    """
    errors: list[str] = []
    for node_path, node in _walk_schemas(schema, path):
        for index, spec in enumerate(node.get("x-kubernetes-validations") or ()):
            for field in ("rule", "messageExpression"):
                expr = spec.get(field)
                if not expr:
                    continue
                try:
                    _programs.get(expr)
                except celpy.CELParseError as e:
                    reason = _parse_error(e)
                    errors.append(
                        str(
                            FieldError(
                                f"{node_path}.x-kubernetes-validations[{index}].{field}",
                                "Invalid",
                                expr,
                                f"compilation failed: {reason}",
                            )
                        )
                    )
    return errors
