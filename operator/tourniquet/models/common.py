"""Shared pieces of the Tourniquet API: base model, conditions, enums.

The pydantic models in this package are the one source of truth for the CRD YAML in `crds/`
(see `tourniquet.crdgen`). A rule a schema cannot say is written twice on purpose: as a pydantic
validator (so the operator and the CLI refuse it with a precise message) and as a CEL rule attached
with `cel(...)` (so the API server refuses it with the same message). Tests hold the two together.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
TOOL_NAME = r"^[A-Za-z][A-Za-z0-9_.-]*$"


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused, values validated."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True)

    def to_api(self) -> dict[str, Any]:
        """The wire form: aliases, no unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_status(self) -> dict[str, Any]:
        """The wire form of a status the operator built: aliases, exactly the fields it set (a None among them
        deletes the field in a merge patch), no default it left out (an unchanged status writes nothing)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, Any]:
    """One `x-kubernetes-validations` entry."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, Any]) -> dict[str, Any]:
    """json_schema_extra for a model or field carrying CEL rules."""
    return {"x-kubernetes-validations": list(rules)}


PRESERVE_UNKNOWN: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}


class ConditionStatus(str, enum.Enum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A Kubernetes-style condition. `lastTransitionTime` changes only when `status` flips."""

    type: str = Field(description="PascalCase condition type, e.g. Ready.")
    status: ConditionStatus
    reason: str = Field(description="CamelCase machine-readable reason.")
    message: str = ""
    last_transition_time: str = Field(alias="lastTransitionTime", description="RFC 3339 time.")
    observed_generation: int | None = Field(default=None, alias="observedGeneration")


class Severity(str, enum.Enum):
    SEV1 = "SEV1"
    SEV2 = "SEV2"
    SEV3 = "SEV3"


class Lever(str, enum.Enum):
    """The containment levers. What each one does, and its order, is its row in tourniquet.levers.registry."""

    SHADOW = "shadow"
    REVOKE_TOOLS = "revokeTools"
    DRAIN = "drain"


class RollbackTo(str, enum.Enum):
    LAST_KNOWN_GOOD = "lastKnownGood"


class RollbackTarget(ApiModel):
    """Where to roll a bundle back to: an exact revision, or the last known-good one."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.revision) != has(self.to)",
                "set exactly one of rollback.revision or rollback.to",
            )
        )
    )

    revision: int | None = Field(default=None, ge=1, description="An exact bundle revision.")
    to: RollbackTo | None = Field(default=None, description="lastKnownGood: the newest revision proven good.")

    @model_validator(mode="after")
    def _exactly_one(self) -> RollbackTarget:
        if (self.revision is None) == (self.to is None):
            raise ValueError("set exactly one of rollback.revision or rollback.to")
        return self
