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

import base64
import dataclasses
import datetime
import json
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import celpy
import jsonschema
from celpy import celtypes

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

Schema = Mapping[str, Any]

# The top-level fields of every Kubernetes object that a CRD schema never needs to declare.
_OBJECT_ROOT_FIELDS = frozenset({"apiVersion", "kind", "metadata"})

# The reasons of `details.causes[]` in a 422 Status, by the kind of field error.
_REASONS = {
    "Required": "FieldValueRequired",
    "Invalid": "FieldValueInvalid",
    "NotSupported": "FieldValueNotSupported",
    "TooLong": "FieldValueTooLong",
    "TooMany": "FieldValueTooMany",
    "Forbidden": "FieldValueForbidden",
    "Duplicate": "FieldValueDuplicate",
    "TypeInvalid": "FieldValueTypeInvalid",
}
_TYPES_BY_REASON = {reason: kind for kind, reason in _REASONS.items()}

# Errors after which the API server does not evaluate CEL rules (the types would not match).
_BLOCKING = frozenset({"TypeInvalid", "NotSupported", "Required", "TooLong", "TooMany"})
_CEL_SKIPPED = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)


@dataclasses.dataclass(frozen=True)
class FieldError:
    """
    One invalid field, shaped like the API server's ``field.Error``.

    ``str(error)`` gives the line the API server prints (``spec.x: Required value``);
    :attr:`reason` and :attr:`message` go into a 422 Status's ``details.causes``.
    """

    path: str
    type: str  # Required, Invalid, NotSupported, TooLong, TooMany, Forbidden, Duplicate, Unknown
    value: Any = None
    detail: str = ""

    @property
    def reason(self) -> str:
        return _REASONS.get(self.type, "FieldValueInvalid")

    @property
    def message(self) -> str:
        """The error without its path, as in ``details.causes[].message``."""
        value = format_value(self.value)
        match self.type:
            case "Required":
                text = "Required value"
            case "NotSupported":
                text = f"Unsupported value: {value}"
            case "TooLong":
                text = "Too long"
            case "TooMany":
                text = f"Too many: {value}"
            case "Forbidden":
                text = "Forbidden"
            case "Unknown":
                text = "field not declared in schema"
            case "Duplicate":
                shown = (
                    json.dumps(self.value, separators=(",", ":"))
                    if isinstance(self.value, Mapping)
                    else value
                )
                text = f"Duplicate value: {shown}"
            case _:
                text = f"Invalid value: {value}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.path or '<nil>'}: {self.message}"


def format_value(value: Any) -> str:
    """Render a value the way the API server does in ``Invalid value: ...``."""
    match value:
        case bool():
            return "true" if value else "false"
        case int() | float():
            return json.dumps(value)
        case str():
            return json.dumps(value)
        case None:
            return "null"
        case Mapping():
            return '"object"'
        case list() | tuple():
            text = json.dumps(list(value), separators=(",", ":"), default=str)
            return text if len(text) <= 80 else '"array"'
        case _:
            return json.dumps(str(value))


def _type_name(value: Any) -> str:
    match value:
        case bool():
            return "boolean"
        case int():
            return "integer"
        case float():
            return "number"
        case str():
            return "string"
        case None:
            return "null"
        case Mapping():
            return "object"
        case list() | tuple():
            return "array"
        case _:
            return type(value).__name__


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _join_field_path(path: str, field_path: str) -> str:
    """Append a CEL rule's ``fieldPath`` (``.a.b``, ``.list[0]``, ``['key']``) to a node's path."""
    field_path = field_path.strip()
    if not field_path:
        return path
    if field_path.startswith("["):
        return f"{path}{field_path}"
    return f"{path}{field_path}" if path else field_path.lstrip(".")


# --------------------------------------------------------------------------------------------------
# Structural schema -> JSON Schema (Draft 2020-12)
# --------------------------------------------------------------------------------------------------

_COPIED_KEYWORDS = (
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxProperties",
    "minProperties",
    "multipleOf",
    "format",
)


def to_json_schema(schema: Schema, *, root: bool = True) -> dict[str, Any]:
    """
    Translate a structural schema into a JSON Schema (Draft 2020-12) for value validation.

    Unknown fields are *not* rejected here (no ``additionalProperties: false``): the API server
    prunes them before validation, and :func:`prune_unknown_fields` reports them separately.
    Defaults are dropped: they are applied by :func:`apply_defaults`, not checked.
    """
    out: dict[str, Any] = {}
    if root:
        out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    nullable = bool(schema.get("nullable"))
    if schema.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}] + ([{"type": "null"}] if nullable else [])
    elif "type" in schema:
        out["type"] = [schema["type"], "null"] if nullable else schema["type"]

    for keyword in _COPIED_KEYWORDS:
        if keyword in schema:
            out[keyword] = schema[keyword]
    if "enum" in schema:
        out["enum"] = list(schema["enum"]) + ([None] if nullable and None not in schema["enum"] else [])

    # OpenAPI v3.0 has boolean exclusive bounds; JSON Schema 2020-12 has numeric ones.
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if bound in schema:
            if schema.get(exclusive) is True:
                out[exclusive] = schema[bound]
            else:
                out[bound] = schema[bound]

    if "properties" in schema:
        out["properties"] = {
            key: to_json_schema(sub, root=False) for key, sub in schema["properties"].items()
        }
    if "required" in schema:
        out["required"] = list(schema["required"])
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        out["additionalProperties"] = to_json_schema(additional, root=False)
    if isinstance(schema.get("items"), Mapping):
        out["items"] = to_json_schema(schema["items"], root=False)
    for keyword in ("allOf", "anyOf", "oneOf"):
        if keyword in schema and not (keyword == "anyOf" and "anyOf" in out):
            out[keyword] = [to_json_schema(sub, root=False) for sub in schema[keyword]]
    if isinstance(schema.get("not"), Mapping):
        out["not"] = to_json_schema(schema["not"], root=False)
    if schema.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    return out


_format_checker = jsonschema.FormatChecker()


@_format_checker.checks("date-time", raises=(ValueError, TypeError))
def _check_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", value):
        return False
    datetime.datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    return True


@_format_checker.checks("date", raises=(ValueError, TypeError))
def _check_date(value: object) -> bool:
    if isinstance(value, str):
        datetime.date.fromisoformat(value)
    return True


@_format_checker.checks("uuid", raises=(ValueError, TypeError))
def _check_uuid(value: object) -> bool:
    if isinstance(value, str):
        uuid.UUID(value)
    return True


@_format_checker.checks("byte", raises=(ValueError, TypeError))
def _check_byte(value: object) -> bool:
    if isinstance(value, str):
        base64.b64decode(value, validate=True)
    return True


@_format_checker.checks("int32")
def _check_int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_format_checker.checks("int64")
def _check_int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


# --------------------------------------------------------------------------------------------------
# CEL
# --------------------------------------------------------------------------------------------------


def _cel_str(value: Any) -> celtypes.StringType:
    return celtypes.StringType(value)


def _ext_functions() -> dict[str, Callable[..., Any]]:
    """A few of the Kubernetes CEL extension functions (strings and lists) that are easy to mirror."""

    def index_of(s: Any, sub: Any, start: Any = 0) -> celtypes.IntType:
        if isinstance(s, list):
            return celtypes.IntType(s.index(sub) if sub in s else -1)
        return celtypes.IntType(s.find(sub, int(start)))

    def last_index_of(s: Any, sub: Any) -> celtypes.IntType:
        if isinstance(s, list):
            return celtypes.IntType(len(s) - 1 - s[::-1].index(sub) if sub in s else -1)
        return celtypes.IntType(s.rfind(sub))

    def substring(s: Any, start: Any, end: Any = None) -> celtypes.StringType:
        return _cel_str(s[int(start) :] if end is None else s[int(start) : int(end)])

    def split(s: Any, sep: Any, limit: Any = -1) -> celtypes.ListType:
        parts = s.split(sep) if int(limit) < 0 else s.split(sep, max(int(limit) - 1, 0))
        return celtypes.ListType([_cel_str(part) for part in parts])

    def join(items: Any, sep: Any = "") -> celtypes.StringType:
        return _cel_str(str(sep).join(str(item) for item in items))

    def find(s: Any, regex: Any) -> celtypes.StringType:
        match = re.search(str(regex), str(s))
        return _cel_str(match.group(0) if match else "")

    def find_all(s: Any, regex: Any, limit: Any = -1) -> celtypes.ListType:
        found = [_cel_str(m.group(0)) for m in re.finditer(str(regex), str(s))]
        return celtypes.ListType(found if int(limit) < 0 else found[: int(limit)])

    def list_sum(items: Any) -> Any:
        return sum(items[1:], items[0]) if items else celtypes.IntType(0)

    return {
        "lowerAscii": lambda s: _cel_str(s.lower()),
        "upperAscii": lambda s: _cel_str(s.upper()),
        "trim": lambda s: _cel_str(s.strip()),
        "replace": lambda s, old, new, n=-1: _cel_str(s.replace(old, new, int(n))),
        "charAt": lambda s, i: _cel_str(s[int(i)] if int(i) < len(s) else ""),
        "indexOf": index_of,
        "lastIndexOf": last_index_of,
        "substring": substring,
        "split": split,
        "join": join,
        "find": find,
        "findAll": find_all,
        "isSorted": lambda items: celtypes.BoolType(list(items) == sorted(items)),
        "sum": list_sum,
        "min": lambda items: min(items),
        "max": lambda items: max(items),
    }


class _CelPrograms:
    """Compiled CEL programs, cached per rule text (compilation is ~100x slower than evaluation)."""

    def __init__(self, limit: int = 2048) -> None:
        self._env = celpy.Environment()
        self._functions = _ext_functions()
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, rule: str) -> Any:
        """Return the compiled program, or raise ``celpy.CELParseError``."""
        with self._lock:
            program = self._cache.get(rule)
            if program is not None:
                self._cache.move_to_end(rule)
                return program
            program = self._env.program(self._env.compile(rule), functions=self._functions)
            self._cache[rule] = program
            if len(self._cache) > self._limit:
                self._cache.popitem(last=False)
            return program


_programs = _CelPrograms()


def _child_schema(schema: Schema, key: str) -> Schema | None:
    props = schema.get("properties")
    if isinstance(props, Mapping) and key in props:
        return props[key]
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        return additional
    return None


def _to_cel(value: Any, schema: Schema | None) -> Any:
    """Convert a JSON value to CEL types, guided by the schema (``number`` fields become doubles)."""
    if value is None:
        return None
    if schema is None:
        return celpy.json_to_cel(value)
    match value:
        case bool():
            return celtypes.BoolType(value)
        case int():
            if schema.get("type") == "number":
                return celtypes.DoubleType(value)
            return celtypes.IntType(value)
        case float():
            return celtypes.DoubleType(value)
        case str():
            fmt = schema.get("format")
            try:
                if fmt == "date-time":
                    return celtypes.TimestampType(value)
                if fmt == "duration":
                    return celtypes.DurationType(value)
            except (ValueError, TypeError):
                pass
            return celtypes.StringType(value)
        case Mapping():
            return celtypes.MapType(
                {
                    celtypes.StringType(key): _to_cel(sub, _child_schema(schema, key))
                    for key, sub in value.items()
                }
            )
        case list() | tuple():
            items = schema.get("items") if isinstance(schema.get("items"), Mapping) else None
            return celtypes.ListType([_to_cel(sub, items) for sub in value])
        case _:
            return celpy.json_to_cel(value)


def _parse_error(error: Exception) -> str:
    column = getattr(error, "column", None)
    return f"syntax error at column {column}" if column else "syntax error"


def _cel_error(error: Exception) -> str:
    """A CEL evaluation error in the words of the Kubernetes CEL runtime, where recognisable."""
    detail = str(error.args[0]) if error.args else str(error)
    if match := re.search(r"no such member in mapping: '([^']*)'", detail):
        return f"no such key: {match.group(1)}"
    if re.search(r"no matching overload for _(\|\||&&)_", detail) and "CELEvalError" in detail:
        return "no such key (a field the rule reads is absent: guard it with has())"
    if match := re.search(r"undeclared reference to '([^']*)'", detail):
        return f"undeclared reference to '{match.group(1)}' (not emulated: a Kubernetes CEL library?)"
    return detail


def _uses_old_self(rule: str) -> bool:
    return re.search(r"\boldSelf\b", rule) is not None


# The outcome of one rule on one value: None when it passes, else (error type, detail).
_Outcome = tuple[str, str] | None
_MISSING: Any = object()


class _OutcomeCache:
    """Outcomes of non-transition rules by (schema node, rule, value): CEL is pure, evaluation is slow."""

    def __init__(self, limit: int = 8192) -> None:
        self._items: OrderedDict[tuple[int, str, str], _Outcome] = OrderedDict()
        self._limit = limit

    def get(self, key: tuple[int, str, str]) -> Any:
        outcome = self._items.get(key, _MISSING)
        if outcome is not _MISSING:
            self._items.move_to_end(key)
        return outcome

    def put(self, key: tuple[int, str, str], outcome: _Outcome) -> None:
        self._items[key] = outcome
        if len(self._items) > self._limit:
            self._items.popitem(last=False)


def _run_rule(spec: Mapping[str, Any], rule: str, activation: dict[str, Any]) -> _Outcome:
    try:
        program = _programs.get(rule)
    except celpy.CELParseError as e:
        return ("Invalid", f"compilation failed: {_parse_error(e)}")
    try:
        result = program.evaluate(activation)
    except Exception as e:  # CELEvalError and anything from the extension functions
        result = e
    if isinstance(result, Exception):
        return ("Invalid", f"{_cel_error(result)} evaluating rule: {rule}")
    if isinstance(result, celtypes.BoolType | bool) and bool(result):
        return None
    message = spec.get("message") or f"failed rule: {rule}"
    if spec.get("messageExpression"):
        try:
            expr_result = _programs.get(spec["messageExpression"]).evaluate(activation)
            if isinstance(expr_result, str) and expr_result.strip():
                message = str(expr_result)
        except Exception:  # the real server falls back to `message` as well
            pass
    return (_TYPES_BY_REASON.get(spec.get("reason", ""), "Invalid"), message)


def _evaluate_rules(
    schema: Schema,
    value: Any,
    old: Any,
    path: str,
    has_old: bool,
    errors: list[FieldError],
    cache: _OutcomeCache | None,
) -> None:
    rules = schema.get("x-kubernetes-validations") or ()
    if not rules:
        return
    activation: dict[str, Any] = {}
    value_key: str | None = None
    for spec in rules:
        rule = spec.get("rule", "")
        transition = _uses_old_self(rule)
        if transition and not has_old:
            continue  # a transition rule: only meaningful on updates
        key = None
        outcome = _MISSING
        if cache is not None and not transition:
            if value_key is None:
                value_key = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
            key = (id(schema), rule, value_key)
            outcome = cache.get(key)
        if outcome is _MISSING:
            if "self" not in activation:
                activation["self"] = _to_cel(value, schema)
            if has_old and "oldSelf" not in activation:
                activation["oldSelf"] = _to_cel(old, schema)
            outcome = _run_rule(spec, rule, activation)
            if key is not None and cache is not None:
                cache.put(key, outcome)
        if outcome is not None:
            error_type, detail = outcome
            field_path = (
                path
                if error_type == "Invalid" and detail.startswith("compilation failed")
                else (_join_field_path(path, spec.get("fieldPath", "")))
            )
            errors.append(FieldError(field_path, error_type, value, detail))


# --------------------------------------------------------------------------------------------------
# The walkers: CEL & list types (validation), pruning, defaulting
# --------------------------------------------------------------------------------------------------


def _map_key(item: Any, keys: Sequence[str]) -> tuple[Any, ...] | None:
    if not isinstance(item, Mapping):
        return None
    return tuple(json.dumps(item.get(key), sort_keys=True) for key in keys)


def _walk_validations(
    schema: Schema,
    value: Any,
    old: Any,
    path: str,
    has_old: bool,
    errors: list[FieldError],
    cache: _OutcomeCache | None = None,
) -> None:
    """
    Evaluate what JSON Schema cannot: CEL rules and ``x-kubernetes-list-type`` uniqueness.

    On updates, unchanged subtrees are not re-validated (validation ratcheting, Kubernetes 1.30+).
    """
    if value is None or not isinstance(schema, Mapping):
        return
    if has_old and value == old:
        return
    _evaluate_rules(schema, value, old, path, has_old, errors, cache)

    if isinstance(value, Mapping):
        props: Mapping[str, Any] = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, sub in value.items():
            sub_schema = (
                props[key] if key in props else additional if isinstance(additional, Mapping) else None
            )
            if sub_schema is None:
                continue
            sub_has_old = has_old and isinstance(old, Mapping) and key in old
            sub_old = old.get(key) if sub_has_old else None
            _walk_validations(sub_schema, sub, sub_old, _join(path, key), sub_has_old, errors, cache)

    elif isinstance(value, list):
        items = schema.get("items")
        list_type = schema.get("x-kubernetes-list-type")
        map_keys = schema.get("x-kubernetes-list-map-keys") or ()
        if list_type == "set":
            seen: set[str] = set()
            for index, item in enumerate(value):
                marker = json.dumps(item, sort_keys=True)
                if marker in seen:
                    errors.append(FieldError(_join(path, index), "Duplicate", item))
                seen.add(marker)
        old_by_key: dict[tuple[Any, ...], Any] = {}
        if list_type == "map" and map_keys:
            keys_seen: set[tuple[Any, ...]] = set()
            for index, item in enumerate(value):
                key = _map_key(item, map_keys)
                if key is not None and key in keys_seen:
                    dup = {k: item.get(k) for k in map_keys}
                    errors.append(FieldError(_join(path, index), "Duplicate", dup))
                if key is not None:
                    keys_seen.add(key)
            if has_old and isinstance(old, list):
                for item in old:
                    key = _map_key(item, map_keys)
                    if key is not None:
                        old_by_key[key] = item
        if isinstance(items, Mapping):
            for index, item in enumerate(value):
                key = _map_key(item, map_keys) if old_by_key else None
                item_has_old = key is not None and key in old_by_key
                item_old = old_by_key.get(key) if key is not None else None
                _walk_validations(items, item, item_old, _join(path, index), item_has_old, errors, cache)


def _clone(value: Any) -> Any:
    """A deep copy of JSON data (several times faster than ``copy.deepcopy``)."""
    if isinstance(value, dict):
        return {key: _clone(sub) for key, sub in value.items()}
    if isinstance(value, list | tuple):
        return [_clone(sub) for sub in value]
    return value


def _preserves_unknown(schema: Schema) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


def _prune(schema: Schema, value: Any, path: str, unknown: list[str], root: bool) -> Any:
    if isinstance(value, Mapping):
        props = schema.get("properties")
        additional = schema.get("additionalProperties")
        embedded = bool(schema.get("x-kubernetes-embedded-resource"))
        result: dict[str, Any] = {}
        for key, sub in value.items():
            if (root or embedded) and key in _OBJECT_ROOT_FIELDS:
                result[key] = _clone(sub)
                continue
            if isinstance(props, Mapping) and key in props:
                sub_schema = props[key]
            elif isinstance(additional, Mapping):
                sub_schema = additional
            elif additional is True or _preserves_unknown(schema):
                result[key] = _clone(sub)
                continue
            else:
                unknown.append(_join(path, key))
                continue
            if sub is None and not sub_schema.get("nullable"):
                continue  # non-nullable nulls are pruned (and then maybe defaulted)
            result[key] = _prune(sub_schema, sub, _join(path, key), unknown, root=False)
        return result
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            return [
                _prune(items, item, _join(path, index), unknown, root=False)
                for index, item in enumerate(value)
            ]
        return _clone(value)
    return value


def prune_unknown_fields(schema: Schema, obj: Any) -> tuple[Any, list[str]]:
    """
    Drop the fields the schema does not declare, as the API server does on every write.

    Returns the pruned copy and the paths of the dropped fields (``spec.foo``,
    ``spec.items[0].bar``): a request with ``fieldValidation=Strict`` is rejected when that list
    is not empty. ``apiVersion``, ``kind`` and ``metadata`` at the root (and in embedded
    resources) are kept. ``x-kubernetes-preserve-unknown-fields: true`` keeps everything below it
    unless declared. Null values of non-nullable fields are dropped too (they are then defaulted).
    """
    unknown: list[str] = []
    pruned = _prune(schema, obj, "", unknown, root=True)
    return pruned, unknown


def _default(schema: Schema, value: Any) -> None:
    if isinstance(value, dict):
        props = schema.get("properties")
        if isinstance(props, Mapping):
            for key, sub_schema in props.items():
                if key not in value and isinstance(sub_schema, Mapping) and "default" in sub_schema:
                    value[key] = _clone(sub_schema["default"])
            for key, sub in value.items():
                if key in props and isinstance(props[key], Mapping):
                    _default(props[key], sub)
        additional = schema.get("additionalProperties")
        if isinstance(additional, Mapping):
            for key, sub in value.items():
                if not isinstance(props, Mapping) or key not in props:
                    _default(additional, sub)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            for item in value:
                _default(items, item)


def apply_defaults(schema: Schema, obj: Any) -> Any:
    """
    Return a copy of ``obj`` with the schema's ``default`` values filled in where fields are absent.

    As on the API server, defaults apply inside objects that exist (a default on ``spec.a.b``
    does nothing when ``spec.a`` is absent, unless ``spec.a`` itself has a default).
    """
    result = _clone(obj)
    if isinstance(schema, Mapping):
        _default(schema, result)
    return result


# --------------------------------------------------------------------------------------------------
# JSON Schema errors -> field errors
# --------------------------------------------------------------------------------------------------


def _path_of(parts: Iterator[str | int] | Sequence[str | int]) -> str:
    path = ""
    for part in parts:
        path = _join(path, part)
    return path


def _translate_error(error: jsonschema.ValidationError, prefix: Sequence[str] = ()) -> list[FieldError]:
    path = _path_of([*prefix, *error.absolute_path])
    shown = path or "<nil>"
    value = error.instance
    keyword = error.validator
    expected = error.validator_value
    match keyword:
        case "required":
            present = value if isinstance(value, Mapping) else {}
            return [FieldError(_join(path, key), "Required") for key in expected if key not in present]
        case "type":
            types = ",".join(expected) if isinstance(expected, list) else expected
            return [
                FieldError(
                    path,
                    "TypeInvalid",
                    _type_name(value),
                    f'{shown} in body must be of type {types}: "{_type_name(value)}"',
                )
            ]
        case "anyOf" if expected and all(set(sub) <= {"type"} for sub in expected):
            types = ",".join(sub["type"] for sub in expected if sub.get("type") != "null")
            return [
                FieldError(
                    path,
                    "TypeInvalid",
                    _type_name(value),
                    f'{shown} in body must be of type {types}: "{_type_name(value)}"',
                )
            ]
        case "enum":
            supported = ", ".join(format_value(item) for item in expected)
            return [FieldError(path, "NotSupported", value, f"supported values: {supported}")]
        case "maxLength":
            return [FieldError(path, "TooLong", value, f"may not be more than {expected} bytes")]
        case "minLength":
            return [
                FieldError(
                    path, "Invalid", value, f"{shown} in body should be at least {expected} chars long"
                )
            ]
        case "pattern":
            return [FieldError(path, "Invalid", value, f"{shown} in body should match '{expected}'")]
        case "maximum":
            return [
                FieldError(
                    path, "Invalid", value, f"{shown} in body should be less than or equal to {expected}"
                )
            ]
        case "exclusiveMaximum":
            return [FieldError(path, "Invalid", value, f"{shown} in body should be less than {expected}")]
        case "minimum":
            return [
                FieldError(
                    path, "Invalid", value, f"{shown} in body should be greater than or equal to {expected}"
                )
            ]
        case "exclusiveMinimum":
            return [FieldError(path, "Invalid", value, f"{shown} in body should be greater than {expected}")]
        case "maxItems":
            count = len(value) if isinstance(value, list) else value
            return [FieldError(path, "TooMany", count, f"must have at most {expected} items")]
        case "minItems":
            count = len(value) if isinstance(value, list) else value
            return [
                FieldError(path, "Invalid", count, f"{shown} in body should have at least {expected} items")
            ]
        case "maxProperties":
            count = len(value) if isinstance(value, Mapping) else value
            return [FieldError(path, "TooMany", count, f"must have at most {expected} items")]
        case "minProperties":
            count = len(value) if isinstance(value, Mapping) else value
            return [
                FieldError(
                    path, "Invalid", count, f"{shown} in body should have at least {expected} properties"
                )
            ]
        case "uniqueItems":
            return [FieldError(path, "Duplicate", value, f"{shown} in body shall not have duplicate items")]
        case "multipleOf":
            return [FieldError(path, "Invalid", value, f"{shown} in body should be a multiple of {expected}")]
        case "format":
            return [
                FieldError(
                    path,
                    "TypeInvalid",
                    value,
                    f"{shown} in body must be of type {expected}: {format_value(value)}",
                )
            ]
        case _:
            return [FieldError(path, "Invalid", value, error.message)]


def _unchanged(new: Any, old: Any, path: Sequence[str | int]) -> bool:
    """Whether the value at ``path`` exists in both objects and is equal."""
    for part in path:
        if isinstance(new, Mapping) and isinstance(old, Mapping) and isinstance(part, str):
            if part not in new or part not in old:
                return False
            new, old = new[part], old[part]
        elif isinstance(new, list) and isinstance(old, list) and isinstance(part, int):
            if part >= len(new) or part >= len(old):
                return False
            new, old = new[part], old[part]
        else:
            return False
    return bool(new == old)


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
                checked = {
                    key: val for key, val in obj.items() if key not in _OBJECT_ROOT_FIELDS or key in declared
                }
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
