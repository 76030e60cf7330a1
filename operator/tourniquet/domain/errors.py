"""Turning validation errors into messages a person can act on."""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(error: ValidationError, prefix: str = "spec") -> str:
    """One clause per problem, each naming the field: 'spec.bundle.model.version: pin an exact ...'."""
    lines = []
    for problem in error.errors():
        path = ".".join([prefix, *(str(p) for p in problem["loc"])])
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{path}: {message}")
    return "; ".join(lines)
