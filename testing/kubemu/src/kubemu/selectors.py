"""Label and field selectors, parsed and matched as the API server does."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from kubemu.errors import _bad_request


class _Requirement(NamedTuple):
    key: str
    op: str  # =, !=, in, notin, exists, !, gt, lt
    values: tuple[str, ...]


def _split_terms(text: str) -> list[str]:
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [term.strip() for term in terms if term.strip()]


_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"


_SET_TERM = re.compile(rf"^({_KEY})\s+(in|notin)\s+\((.*)\)$")


_OP_TERM = re.compile(rf"^({_KEY})\s*(==|!=|=|>|<)\s*([-A-Za-z0-9_.]*)$")


class LabelSelector:
    """A parsed label selector (string or structured form) that matches label dicts."""

    def __init__(self, requirements: Iterable[_Requirement] = ()) -> None:
        self.requirements = tuple(requirements)

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        """Parse ``a=b,c!=d,e in (f,g),!h,i``; raise ``ValueError`` on bad syntax."""
        requirements = []
        for term in _split_terms(text or ""):
            if term.startswith("!"):
                key = term[1:].strip()
                if not re.fullmatch(_KEY, key):
                    raise ValueError(f'unable to parse requirement: invalid label key "{key}"')
                requirements.append(_Requirement(key, "!", ()))
            elif match := _SET_TERM.match(term):
                values = tuple(v.strip() for v in match.group(3).split(",") if v.strip())
                requirements.append(_Requirement(match.group(1), match.group(2), values))
            elif match := _OP_TERM.match(term):
                op = {"==": "=", ">": "gt", "<": "lt"}.get(match.group(2), match.group(2))
                if op in ("gt", "lt") and not re.fullmatch(r"-?\d+", match.group(3)):
                    raise ValueError(
                        f'unable to parse requirement: for "{op}" operator, the value must be an integer: {term}'
                    )
                requirements.append(_Requirement(match.group(1), op, (match.group(3),)))
            elif re.fullmatch(_KEY, term):
                requirements.append(_Requirement(term, "exists", ()))
            else:
                raise ValueError(f"unable to parse requirement: found '{term}', expected: in, notin, =, ==, !=, gt, lt")
        return cls(requirements)

    @classmethod
    def from_structured(cls, selector: Mapping[str, Any] | None) -> LabelSelector:
        """Build from ``{matchLabels: {...}, matchExpressions: [...]}`` (as in Deployments)."""
        requirements = []
        for key, value in sorted(((selector or {}).get("matchLabels") or {}).items()):
            requirements.append(_Requirement(key, "=", (str(value),)))
        for expr in (selector or {}).get("matchExpressions") or ():
            op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}.get(expr.get("operator"), "")
            requirements.append(_Requirement(expr.get("key", ""), op, tuple(expr.get("values") or ())))
        return cls(requirements)

    def __str__(self) -> str:
        parts = []
        for req in self.requirements:
            match req.op:
                case "=" | "!=":
                    parts.append(f"{req.key}{req.op}{req.values[0]}")
                case "in" | "notin":
                    parts.append(f"{req.key} {req.op} ({','.join(sorted(req.values))})")
                case "exists":
                    parts.append(req.key)
                case "!":
                    parts.append(f"!{req.key}")
                case "gt":
                    parts.append(f"{req.key}>{req.values[0]}")
                case "lt":
                    parts.append(f"{req.key}<{req.values[0]}")
        return ",".join(parts)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def matches(self, labels: Mapping[str, Any] | None) -> bool:
        labels = labels or {}
        for req in self.requirements:
            present = req.key in labels
            value = str(labels.get(req.key)) if present else None
            match req.op:
                case "=":
                    ok = present and value == req.values[0]
                case "!=":
                    ok = not present or value != req.values[0]
                case "in":
                    ok = present and value in req.values
                case "notin":
                    ok = not present or value not in req.values
                case "exists":
                    ok = present
                case "!":
                    ok = not present
                case "gt" | "lt":
                    try:
                        number = int(value) if value is not None else None
                    except ValueError:
                        number = None
                    bound = int(req.values[0])
                    ok = number is not None and (number > bound if req.op == "gt" else number < bound)
                case _:
                    ok = False
            if not ok:
                return False
        return True


def _get_path(obj: Any, dotted: str) -> Any:
    for part in dotted.strip(".").split("."):
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def _field_value(obj: Mapping[str, Any], field: str) -> str:
    value = _get_path(obj, "source.component" if field == "source" else field)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _FieldSelector:
    def __init__(self, terms: Iterable[tuple[str, str, str]] = ()) -> None:
        self.terms = tuple(terms)

    @classmethod
    def parse(cls, text: str | None, allowed: frozenset[str], *, custom: bool) -> _FieldSelector:
        terms = []
        for term in _split_terms(text or ""):
            match = re.fullmatch(r"([^=!]+?)\s*(==|!=|=)\s*(.*)", term)
            if not match:
                raise _bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
            field, op, value = match.group(1).strip(), match.group(2), match.group(3).strip()
            if field not in allowed:
                if custom:
                    raise _bad_request(
                        f'"{field}" is not a known field selector: only '
                        f"{', '.join(json.dumps(f) for f in sorted(allowed))}"
                    )
                raise _bad_request(f"field label not supported: {field}")
            terms.append((field, "!=" if op == "!=" else "=", value))
        return cls(terms)

    def __bool__(self) -> bool:
        return bool(self.terms)

    def exact_name(self) -> str | None:
        for field, op, value in self.terms:
            if field == "metadata.name" and op == "=":
                return value
        return None

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for field, op, value in self.terms:
            actual = _field_value(obj, field)
            if (actual == value) != (op == "="):
                return False
        return True
