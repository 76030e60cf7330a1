"""Decision traces: what led an agent to each action, kept for the postmortem, bounded and redacted.

Inside a task, the agent says what the model saw and said; every side-effecting action recorded in that
task carries it (with the task id, the bundle revision and the tool's arguments, which are on the action
itself)::

    with runtime.task("refund_request", task_id=ticket.id) as task:
        task.model_input(messages)                    # a redacted copy, cut to the size limit
        task.retrieved_context(ref="s3://kb/snapshots/2026-11-21/ticket-812.json")   # or a reference
        reply = llm.complete(messages)
        task.model_output(reply)
        issue_refund(order_id, amount_cents)          # its trace: the three parts above

Each part is stored as JSON: ``{"value": ..., "bytes": N, "truncated": false}`` — the value with secrets
redacted (the same rules as the operator's evidence: passwords, tokens, API keys, bearer credentials,
private keys) and, when its JSON is longer than the limit (``TOURNIQUET_TRACE_LIMIT_BYTES``, 16 KiB by
default), cut to it and stored as text with ``truncated: true``; or ``{"ref": "..."}`` when the agent
keeps the material elsewhere. A later call for the same part replaces it (the last model output is the
one that led to the next action).

Traces are kept ``TOURNIQUET_TRACE_RETENTION_DAYS`` (30 by default): :class:`TraceRetention` deletes
older ones once an hour from every runtime (one ``DELETE`` over an index, harmless when several
replicas run it). Actions themselves are never pruned.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tourniquet.runtime.ledger import Ledger, Trace, canonical_json
from tourniquet.shared.redaction import redact

log = logging.getLogger(__name__)

DEFAULT_PART_LIMIT = 16 * 1024
DEFAULT_RETENTION = timedelta(days=30)
PRUNE_INTERVAL_SECONDS = 3600.0
PARTS = ("model_input", "retrieved_context", "model_output")


def _plain(value: Any) -> Any:
    """The value as JSON-compatible data (objects the encoder does not know become their str)."""
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def trace_part(value: Any = None, *, ref: str | None = None, limit: int = DEFAULT_PART_LIMIT) -> str:
    """One part of a trace as stored: a redacted copy of ``value`` cut to ``limit`` bytes, or a reference."""
    if ref is not None:
        if value is not None:
            raise ValueError("give a trace part's value or a reference to it (ref=...), not both")
        return canonical_json({"ref": str(ref)})
    redacted = redact(_plain(value))
    text = canonical_json(redacted)
    size = len(text.encode())
    if size <= limit:
        return canonical_json({"value": redacted, "bytes": size, "truncated": False})
    cut = text.encode()[:limit].decode(errors="ignore")
    return canonical_json({"value": cut, "bytes": size, "truncated": True})


@dataclass
class TaskTrace:
    """The trace material of one task; :meth:`Guard.task <tourniquet.runtime.guard.Guard.task>` yields it."""

    name: str
    task_id: str | None
    limit: int = DEFAULT_PART_LIMIT
    _parts: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _set(self, part: str, value: Any, ref: str | None) -> None:
        stored = trace_part(value, ref=ref, limit=self.limit)
        with self._lock:
            self._parts[part] = stored

    def model_input(self, value: Any = None, *, ref: str | None = None) -> None:
        """What the model was given (messages, the rendered prompt), or a reference to it."""
        self._set("model_input", value, ref)

    def retrieved_context(self, value: Any = None, *, ref: str | None = None) -> None:
        """What retrieval brought in (documents, records), or a reference to it."""
        self._set("retrieved_context", value, ref)

    def model_output(self, value: Any = None, *, ref: str | None = None) -> None:
        """What the model answered (the completion, its tool calls), or a reference to it."""
        self._set("model_output", value, ref)

    def parts(self) -> Mapping[str, str]:
        with self._lock:
            return dict(self._parts)

    def for_action(self, idempotency_key: str, recorded_at: datetime | None = None) -> Trace:
        parts = self.parts()
        return Trace(
            idempotency_key=idempotency_key,
            recorded_at=recorded_at or datetime.now(UTC),
            task_name=self.name,
            model_input=parts.get("model_input"),
            retrieved_context=parts.get("retrieved_context"),
            model_output=parts.get("model_output"),
        )


class TraceRetention:
    """Deletes traces older than ``retention`` now (:meth:`prune`) and, once started, every ``interval`` s."""

    def __init__(
        self, ledger: Ledger, retention: timedelta = DEFAULT_RETENTION, *, interval: float = PRUNE_INTERVAL_SECONDS
    ) -> None:
        if retention <= timedelta(0):
            raise ValueError(f"trace retention must be positive, not {retention}")
        self.ledger = ledger
        self.retention = retention
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def prune(self, now: datetime | None = None) -> int:
        """Delete the traces recorded before ``now - retention``; how many went (0 when the ledger cannot)."""
        prune = getattr(self.ledger, "prune_traces", None)
        if prune is None:
            return 0
        removed: int = prune((now or datetime.now(UTC)) - self.retention)
        if removed:
            log.info("Pruned %d decision traces older than %s", removed, self.retention)
        return removed

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.prune()
            except Exception:  # the next round tries again; an agent never stops over its traces
                log.exception("Could not prune decision traces")
            self._stop.wait(self.interval)

    def start(self) -> TraceRetention:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tourniquet-trace-retention", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
