"""Field errors as the API server reports them (``field.Error``): ``<path>: <reason>``, and from JSON Schema errors."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jsonschema

Schema = Mapping[str, Any]


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
                shown = json.dumps(self.value, separators=(",", ":")) if isinstance(self.value, Mapping) else value
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
            return [FieldError(path, "Invalid", value, f"{shown} in body should be at least {expected} chars long")]
        case "pattern":
            return [FieldError(path, "Invalid", value, f"{shown} in body should match '{expected}'")]
        case "maximum":
            return [FieldError(path, "Invalid", value, f"{shown} in body should be less than or equal to {expected}")]
        case "exclusiveMaximum":
            return [FieldError(path, "Invalid", value, f"{shown} in body should be less than {expected}")]
        case "minimum":
            return [
                FieldError(path, "Invalid", value, f"{shown} in body should be greater than or equal to {expected}")
            ]
        case "exclusiveMinimum":
            return [FieldError(path, "Invalid", value, f"{shown} in body should be greater than {expected}")]
        case "maxItems":
            count = len(value) if isinstance(value, list) else value
            return [FieldError(path, "TooMany", count, f"must have at most {expected} items")]
        case "minItems":
            count = len(value) if isinstance(value, list) else value
            return [FieldError(path, "Invalid", count, f"{shown} in body should have at least {expected} items")]
        case "maxProperties":
            count = len(value) if isinstance(value, Mapping) else value
            return [FieldError(path, "TooMany", count, f"must have at most {expected} items")]
        case "minProperties":
            count = len(value) if isinstance(value, Mapping) else value
            return [FieldError(path, "Invalid", count, f"{shown} in body should have at least {expected} properties")]
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
