"""The bundle: the model an agent runs (pinned to an exact version), its prompt and its tools, one versioned unit.

Kept apart from `agentdeployment` (the spec and status around it) so each reads on its own; a bundle revision is
what the operator pins, rolls back and evaluates.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Any

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tourniquet.models.common import PRESERVE_UNKNOWN, TOOL_NAME, ApiModel, cel, validations

# A version that moves by itself cannot be rolled back to: only the forms that name one model build forever
# count as pinned. A family name (gpt-5), a tag (v1, stable, latest) or a bare number may point at another
# model tomorrow, and a rollback to it would not bring the old behaviour back.
# The patterns are written for RE2 (CEL's `matches`) and Python alike, without backslashes (a CEL string
# literal would need them doubled); Python checks them with fullmatch, as RE2's `^...$` reads them.
_MODEL_ID = "([A-Za-z0-9._/-]*-)?"  # the model id before the version, when the version is written whole
_DATE = (
    "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"  # 2026-08-06 (OpenAI, Azure OpenAI)
    "|[0-9]{4}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])"  # 20250514 (Anthropic)
)
PINNED_VERSION_PATTERN = (
    f"^({_MODEL_ID}({_DATE})(-v[0-9]+(:[0-9]+)?)?"  # a date, alone or ending the model id; Bedrock's -v1:0
    "|sha256:[0-9a-f]{64}"  # a content digest (a self-hosted model's image or weights)
    "|[0-9a-f]{40})$"  # a commit (a Hugging Face revision)
)
# Providers whose pinned versions take another form as well: provider pattern -> version pattern.
PINNED_VERSION_BY_PROVIDER = {
    "(?i)^(google|vertex-ai|vertexai)$": f"^{_MODEL_ID}[0-9]{{3}}$",  # gemini-2.0-flash-001, or 001
    "(?i)^(mistral|mistralai)$": f"^{_MODEL_ID}[0-9]{{2}}(0[1-9]|1[0-2])$",  # mistral-large-2407 (YYMM)
}
FLOATING_VERSION_MESSAGE = (
    "pin an exact model version; a floating version makes rollback impossible (pinned: a date such as "
    "2026-08-06 or 20260806, alone or ending the model id, as in gpt-4o-2024-08-06 or "
    "anthropic.claude-3-5-sonnet-20240620-v1:0; a digest sha256:<64 hex>; a 40-hex commit; for google or "
    "vertex-ai also a stable number such as 002; for mistral a YYMM release such as 2407)"
)
PINNED_VERSION_RULE = " || ".join(
    [
        f"self.version.matches('{PINNED_VERSION_PATTERN}')",
        *(
            f"(self.provider.matches('{provider}') && self.version.matches('{version}'))"
            for provider, version in PINNED_VERSION_BY_PROVIDER.items()
        ),
    ]
)


def is_pinned_version(provider: str, version: str) -> bool:
    """Whether `version` names one model build forever (see PINNED_VERSION_PATTERN and the per-provider forms)."""
    if re.fullmatch(PINNED_VERSION_PATTERN, version):
        return True
    return any(
        re.fullmatch(provider_pattern, provider) and re.fullmatch(version_pattern, version)
        for provider_pattern, version_pattern in PINNED_VERSION_BY_PROVIDER.items()
    )


_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# An IPv4 CIDR in its plain form, every one of which ip_network accepts: most egress rules are, and matching them
# costs a tenth of building the network (an agent's spec is validated on every incident pass). Anything else (IPv6,
# a netmask, a typo) is decided by ip_network.
_PLAIN_IPV4_CIDR = re.compile(rf"({_OCTET}\.){{3}}{_OCTET}(/(3[0-2]|[12]?[0-9]))?")


class EgressRule(ApiModel):
    """An endpoint a tool (or the model) may reach: a CIDR and its ports."""

    cidr: str = Field(description="IPv4 or IPv6 CIDR, e.g. 10.20.0.0/16.")
    ports: list[int] = Field(default_factory=list, description="TCP/UDP ports; empty means every port.")
    protocol: str = Field(default="TCP", pattern=r"^(TCP|UDP|SCTP)$")

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        if _PLAIN_IPV4_CIDR.fullmatch(value):
            return value
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR such as 10.20.0.0/16") from None
        return value

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is out of range 1-65535")
        return value


class ModelRef(ApiModel):
    """The language model the agent runs, pinned to an exact version."""

    model_config = ConfigDict(
        json_schema_extra=validations(cel(PINNED_VERSION_RULE, FLOATING_VERSION_MESSAGE, ".version"))
    )

    provider: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    version: str = Field(
        min_length=1,
        max_length=128,
        description="A pinned version: a date (2026-08-06, 20250514, or ending the model id), a digest "
        "sha256:<64 hex>, a 40-hex commit; google/vertex-ai also 002, mistral also 2407. A family name is refused.",
    )
    egress: list[EgressRule] = Field(
        default_factory=list, description="Where the model endpoint lives (allowed in the NetworkPolicy)."
    )

    @field_validator("version")
    @classmethod
    def _pinned(cls, value: str, info: ValidationInfo) -> str:
        if not is_pinned_version(str(info.data.get("provider") or ""), value):
            raise ValueError(FLOATING_VERSION_MESSAGE)
        return value


class Prompt(ApiModel):
    template: str = Field(min_length=1, description="The system prompt template.")


class SideEffects(str, enum.Enum):
    WRITE = "write"
    READ = "read"


class CompensationType(str, enum.Enum):
    REVERSAL = "reversal"
    MITIGATION = "mitigation"
    NONE = "none"


class Compensation(ApiModel):
    """How to undo a tool's action: reverse it, mitigate it, or nothing can be done."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            # `type` may be absent (the CRD sets no defaults): absent means none.
            cel(
                "!has(self.type) || self.type != 'reversal' || has(self.tool)",
                "a reversal names the tool that undoes the action",
            )
        )
    )

    type: CompensationType = CompensationType.NONE
    tool: str | None = Field(default=None, pattern=TOOL_NAME, description="The tool that reverses or mitigates.")
    description: str | None = None
    steps: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="mitigation: what a human does for each such action (the compensation's checklist).",
    )
    reason: str | None = Field(default=None, max_length=1024, description="none: why the action cannot be undone.")

    @model_validator(mode="after")
    def _reversal_has_tool(self) -> Compensation:
        if self.type == CompensationType.REVERSAL and not self.tool:
            raise ValueError("a reversal names the tool that undoes the action")
        return self


class Tool(ApiModel):
    name: str = Field(min_length=1, max_length=63, pattern=TOOL_NAME)
    description: str | None = None
    schema_: dict[str, Any] = Field(
        default_factory=dict,
        alias="schema",
        description="JSON schema of the tool's arguments.",
        json_schema_extra=PRESERVE_UNKNOWN,
    )
    egress: list[EgressRule] = Field(default_factory=list, description="What revoking this tool cuts.")
    side_effects: SideEffects = Field(
        default=SideEffects.WRITE,
        alias="sideEffects",
        description="write (the default, the safe assumption) or read. Revocation defaults to write tools.",
    )
    compensation: Compensation | None = None


class Bundle(ApiModel):
    """Model, prompt and tool schemas: one versioned, immutable unit."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.tools) || self.tools.all(t, self.tools.exists_one(u, u.name == t.name))",
                "tool names must be unique",
                ".tools",
            )
        )
    )

    model: ModelRef
    prompt: Prompt
    # Bounded so the API server can cost the uniqueness rule above (n² name comparisons).
    tools: list[Tool] = Field(default_factory=list, max_length=64)

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, tools: list[Tool]) -> list[Tool]:
        seen: set[str] = set()
        for tool in tools:
            if tool.name in seen:
                raise ValueError("tool names must be unique")
            seen.add(tool.name)
        return tools
