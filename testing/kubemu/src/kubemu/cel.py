"""``x-kubernetes-validations``: CEL rules evaluated with cel-python, with the few Kubernetes extensions
that are easy to mirror."""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import celpy
from celpy import celtypes

from kubemu.fielderrors import _TYPES_BY_REASON, FieldError, _join, _join_field_path

if TYPE_CHECKING:
    from kubemu.fielderrors import Schema


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
                {celtypes.StringType(key): _to_cel(sub, _child_schema(schema, key)) for key, sub in value.items()}
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
            sub_schema = props[key] if key in props else additional if isinstance(additional, Mapping) else None
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
