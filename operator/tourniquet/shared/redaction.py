"""Redaction: secret-looking values (passwords, tokens, API keys, bearer credentials, private keys) replaced by
``[REDACTED]`` in the operator's evidence and in the decision traces the agents' runtime records: one set of rules
for both."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

REDACTED = "[REDACTED]"

_SECRET_WORDS = (
    r"(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credentials?|auth)"
)
_PATTERNS = [
    # Credentials after a scheme first, so the generic key=value rule below cannot stop at "Bearer".
    re.compile(r"(?i)(authorization:\s*(?:bearer|basic)\s+)(\S+)"),
    re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/-]{16,}=*)"),
    # key=value, key: value, "key": "value"
    # Bounded key lengths keep this linear on long lines (an unbounded [\w]* backtracks quadratically).
    re.compile(
        rf"(?i)(\"?[\w.-]{{0,40}}{_SECRET_WORDS}[\w.-]{{0,40}}\"?\s{{0,3}}[:=]\s{{0,3}}\"?)((?!\[REDACTED\])[^\s\",;]+)"
    ),
    re.compile(r"()(sk-[A-Za-z0-9_-]{16,})"),  # API keys in the style of LLM providers
    re.compile(r"()(AKIA[0-9A-Z]{16})"),  # AWS access key ids
    re.compile(r"()(eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"),  # JWTs
    re.compile(r"(-----BEGIN [A-Z ]*PRIVATE KEY-----)[\s\S]*?(?=-----END)"),
]
_SECRET_NAME = re.compile(rf"(?i){_SECRET_WORDS}")
# Every pattern above needs one of these (case-folded) to match; most strings in evidence (names, images,
# phases, a bundle's prompt) contain none. Substring tests on the case-folded text are far cheaper than
# seven substitutions, and than one case-insensitive regex (~150 ns per character).
_MAYBE_SECRET_WORDS = (
    "password", "passwd", "pwd", "secret", "token", "apikey", "api_key", "api-key", "accesskey", "access_key",
    "access-key", "privatekey", "private_key", "private-key", "credential", "auth", "bearer", "sk-", "akia",
    "eyj", "-----begin",
)  # fmt: skip


def redact_all_patterns(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def might_hold_secret(text: str) -> bool:
    folded = text.casefold()
    return any(word in folded for word in _MAYBE_SECRET_WORDS)


def redact_text(text: str) -> str:
    return redact_all_patterns(text) if might_hold_secret(text) else text


@functools.lru_cache(maxsize=4096)
def _secret_name(name: str) -> bool:
    """Whether a key or env var name says it holds a secret (the same few keys recur in every object)."""
    return _SECRET_NAME.search(name) is not None


def redact(value: Any, *, quick: bool = True) -> Any:
    """Redact a JSON-like value: secret-looking keys lose their values, strings are scrubbed.

    `quick`: a dict or list whose JSON text (keys included, characters unescaped) holds no secret word is
    returned as it is, without walking it in Python; a word it holds is found in every part it came from."""
    text = json.dumps(value, ensure_ascii=False, default=str) if quick and isinstance(value, dict | list) else None
    if text is not None and not might_hold_secret(text):
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        # An env entry {"name": "API_TOKEN", "value": "..."} hides its value.
        secret_env = isinstance(value.get("name"), str) and _secret_name(value["name"]) and "value" in value
        for key, item in value.items():
            if (secret_env and key == "value") or (isinstance(item, str) and _secret_name(str(key))):
                out[key] = REDACTED
            else:
                out[key] = redact(item, quick=quick)
        return out
    if isinstance(value, list):
        return [redact(v, quick=quick) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
