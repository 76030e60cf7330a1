"""The ledger in standard SQL, its first half: transactions and migrations, recording actions and their
traces, and reading them back (windows, subjects, the blast radius)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

from tourniquet.runtime.ledger_records import (
    SUPERSEDABLE_OUTCOMES,
    Action,
    IdempotencyConflict,
    LedgerError,
    LedgerRadius,
    ToolRadius,
    Trace,
    _require_utc,
)
from tourniquet.runtime.ledger_schema import (
    _ACTION_COLUMNS,
    _ACTION_COLUMNS_OF_A,
    _ACTION_PLACEHOLDERS,
    _TRACE_COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    _marks,
    _outcomes,
)

if TYPE_CHECKING:
    from tourniquet.runtime.ledger_schema import Cursor, SqlDialect


class SqlActions(ABC):
    """Actions and traces in standard SQL; subclasses supply connections and a :class:`SqlDialect`."""

    dialect: SqlDialect

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Cursor]:
        """A transaction (taking the write lock up front when ``write``), committed unless it raises."""

    @abstractmethod
    def close(self) -> None: ...

    def _lock_migrations(self, cur: Cursor) -> None:  # noqa: B027  (a hook: SQLite needs nothing here)
        """Serialise migrations between processes, inside the migration's transaction (SQLite's
        ``BEGIN IMMEDIATE`` already does)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _exec(self, cur: Cursor, statement: str, params: Sequence[Any] = ()) -> Cursor:
        cur.execute(self.dialect.sql(statement), list(params))
        return cur

    def _read(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read-only statement, in a transaction of its own."""
        with self._transaction(write=False) as cur:
            return list(self._exec(cur, statement, params).fetchall())

    def _time(self, value: datetime, what: str) -> Any:
        return self.dialect.to_db_time(_require_utc(value, what))

    def _migrate(self) -> None:
        with self._transaction(write=True) as cur:
            self._lock_migrations(cur)
            self._exec(cur, "CREATE TABLE IF NOT EXISTS tourniquet_ledger_schema (version INTEGER NOT NULL)")
            row = self._exec(cur, "SELECT MAX(version) FROM tourniquet_ledger_schema").fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            if current > SCHEMA_VERSION:
                raise LedgerError(
                    f"the ledger's schema is version {current} but this library knows versions up to "
                    f"{SCHEMA_VERSION}: upgrade tourniquet before opening this ledger"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    self._exec(cur, statement.format(ts=self.dialect.timestamp_type))
                self._exec(cur, "INSERT INTO tourniquet_ledger_schema (version) VALUES (?)", [version])

    def schema_version(self) -> int:
        rows = self._read("SELECT MAX(version) FROM tourniquet_ledger_schema")
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def _row_to_action(self, row: Sequence[Any], subjects: Sequence[str]) -> Action:
        key, agent, tool, digest, args_json, when, outcome, summary, attempts = row[:9]
        task_id, revision, bundle_hash, amount, unit = row[9:]
        return Action(
            idempotency_key=key,
            agent=agent,
            tool=tool,
            args_digest=digest,
            args_json=args_json,
            subjects=tuple(subjects),
            time=self.dialect.from_db_time(when),
            outcome=outcome,
            result_summary=summary,
            attempts=int(attempts),
            task_id=task_id,
            bundle_revision=int(revision) if revision is not None else None,
            bundle_hash=bundle_hash,
            amount=int(amount) if amount is not None else None,
            amount_unit=unit,
        )

    def _load(self, cur: Cursor, key: str) -> Action | None:
        row = self._exec(cur, f"SELECT {_ACTION_COLUMNS} FROM tourniquet_actions WHERE idempotency_key = ?", [key])
        found = row.fetchone()
        if found is None:
            return None
        subjects = self._exec(
            cur,
            "SELECT subject FROM tourniquet_action_subjects WHERE idempotency_key = ? ORDER BY position",
            [key],
        ).fetchall()
        return self._row_to_action(found, [s[0] for s in subjects])

    def _window(
        self,
        agent: str,
        start: datetime,
        end: datetime | None,
        tools: Iterable[str] | None,
        outcomes: Iterable[str],
        alias: str = "a",
    ) -> tuple[str, list[Any]]:
        """The WHERE clause (over a table aliased ``alias`` with agent, action_time, outcome and tool) of a
        window query, and its parameters."""
        chosen = _outcomes(outcomes)
        clauses = [f"{alias}.agent = ?", f"{alias}.action_time >= ?", f"{alias}.outcome IN ({_marks(len(chosen))})"]
        params: list[Any] = [agent, self._time(start, "start"), *chosen]
        if end is not None:
            clauses.append(f"{alias}.action_time < ?")
            params.append(self._time(end, "end"))
        if tools is not None:
            tool_list = sorted(set(tools))
            if not tool_list:
                clauses.append("1 = 0")
            else:
                clauses.append(f"{alias}.tool IN ({_marks(len(tool_list))})")
                params += tool_list
        return " AND ".join(clauses), params

    def _write_trace(self, cur: Cursor, trace: Trace, *, replace_existing: bool) -> None:
        if replace_existing:
            self._exec(cur, "DELETE FROM tourniquet_traces WHERE idempotency_key = ?", [trace.idempotency_key])
        self._exec(
            cur,
            f"INSERT INTO tourniquet_traces ({_TRACE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (idempotency_key) DO NOTHING",
            [
                trace.idempotency_key,
                self.dialect.to_db_time(trace.recorded_at),
                trace.task_name,
                trace.model_input,
                trace.retrieved_context,
                trace.model_output,
            ],
        )

    def record(self, action: Action, trace: Trace | None = None) -> Action:
        """Store an action (and its trace); idempotent on its key (see the module docstring). Returns it as stored."""
        if trace is not None and trace.idempotency_key != action.idempotency_key:
            raise ValueError(f"the trace is of {trace.idempotency_key!r}, not of the action {action.idempotency_key!r}")
        when = self.dialect.to_db_time(action.time)
        with self._transaction(write=True) as cur:
            inserted = self._exec(
                cur,
                f"INSERT INTO tourniquet_actions ({_ACTION_COLUMNS}) VALUES ({_ACTION_PLACEHOLDERS}) "
                "ON CONFLICT (idempotency_key) DO NOTHING",
                [
                    action.idempotency_key,
                    action.agent,
                    action.tool,
                    action.args_digest,
                    action.args_json,
                    when,
                    action.outcome,
                    action.result_summary,
                    action.attempts,
                    action.task_id,
                    action.bundle_revision,
                    action.bundle_hash,
                    action.amount,
                    action.amount_unit,
                ],
            ).rowcount
            if inserted == 1:
                for position, subject in enumerate(action.subjects):
                    self._exec(
                        cur,
                        "INSERT INTO tourniquet_action_subjects "
                        "(idempotency_key, position, subject, agent, tool, action_time, outcome) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [action.idempotency_key, position, subject, action.agent, action.tool, when, action.outcome],
                    )
                if trace is not None:
                    self._write_trace(cur, trace, replace_existing=False)
                return action
            stored = self._load(cur, action.idempotency_key)
            assert stored is not None, "a conflicting insert implies a stored row"
            if (stored.agent, stored.tool, stored.args_digest) != (action.agent, action.tool, action.args_digest):
                raise IdempotencyConflict(action.idempotency_key, stored, action)
            superseded = self._exec(
                cur,
                "UPDATE tourniquet_actions "
                "SET outcome = ?, action_time = ?, result_summary = ?, attempts = attempts + 1, "
                "bundle_revision = ?, bundle_hash = ? "
                f"WHERE idempotency_key = ? AND outcome IN ({_marks(len(SUPERSEDABLE_OUTCOMES))})",
                [
                    action.outcome,
                    when,
                    action.result_summary,
                    action.bundle_revision,
                    action.bundle_hash,
                    action.idempotency_key,
                    *SUPERSEDABLE_OUTCOMES,
                ],
            ).rowcount
            if superseded:
                self._exec(
                    cur,
                    "UPDATE tourniquet_action_subjects SET outcome = ?, action_time = ? WHERE idempotency_key = ?",
                    [action.outcome, when, action.idempotency_key],
                )
                if trace is not None:
                    self._write_trace(cur, trace, replace_existing=True)
                return replace(
                    stored,
                    outcome=action.outcome,
                    time=action.time,
                    result_summary=action.result_summary,
                    attempts=stored.attempts + 1,
                    bundle_revision=action.bundle_revision,
                    bundle_hash=action.bundle_hash,
                )
            return stored

    def get(self, idempotency_key: str) -> Action | None:
        with self._transaction(write=False) as cur:
            return self._load(cur, idempotency_key)

    def trace(self, idempotency_key: str) -> Trace | None:
        """The decision trace of an action; None when none was recorded or retention removed it."""
        statement = f"SELECT {_TRACE_COLUMNS} FROM tourniquet_traces WHERE idempotency_key = ?"
        rows = self._read(statement, [idempotency_key])
        if not rows:
            return None
        key, recorded_at, task_name, model_input, context, output = rows[0]
        return Trace(
            idempotency_key=key,
            recorded_at=self.dialect.from_db_time(recorded_at),
            task_name=task_name,
            model_input=model_input,
            retrieved_context=context,
            model_output=output,
        )

    def prune_traces(self, before: datetime) -> int:
        """Delete the traces recorded before ``before`` (retention); returns how many went."""
        with self._transaction(write=True) as cur:
            return self._exec(
                cur, "DELETE FROM tourniquet_traces WHERE recorded_at < ?", [self._time(before, "before")]
            ).rowcount

    def actions(
        self,
        agent: str,
        start: datetime,
        end: datetime | None = None,
        *,
        tools: Iterable[str] | None = None,
        outcomes: Iterable[str] = ("ok",),
    ) -> list[Action]:
        """The agent's actions in ``[start, end)``, oldest first: an incident's blast radius."""
        where, params = self._window(agent, start, end, tools, outcomes)
        subject_where, subject_params = self._window(agent, start, end, tools, outcomes, alias="s")
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                f"SELECT {_ACTION_COLUMNS_OF_A} FROM tourniquet_actions a "
                f"WHERE {where} ORDER BY a.action_time, a.idempotency_key",
                params,
            ).fetchall()
            subject_rows = self._exec(
                cur,
                "SELECT s.idempotency_key, s.position, s.subject FROM tourniquet_action_subjects s "
                f"WHERE {subject_where}",
                subject_params,
            ).fetchall()
        subjects: dict[str, list[tuple[int, str]]] = {}
        for key, position, subject in subject_rows:
            subjects.setdefault(key, []).append((int(position), subject))
        return [self._row_to_action(row, [s for _, s in sorted(subjects.get(row[0], ()))]) for row in rows]

    def count_by_tool(
        self,
        agent: str,
        start: datetime,
        end: datetime | None = None,
        *,
        tools: Iterable[str] | None = None,
        outcomes: Iterable[str] = ("ok",),
    ) -> dict[str, int]:
        """How many actions each tool took in ``[start, end)``."""
        where, params = self._window(agent, start, end, tools, outcomes)
        rows = self._read(f"SELECT a.tool, COUNT(*) FROM tourniquet_actions a WHERE {where} GROUP BY a.tool", params)
        return {tool: int(count) for tool, count in sorted(rows)}

    def subjects(
        self,
        agent: str,
        start: datetime,
        end: datetime | None = None,
        *,
        tools: Iterable[str] | None = None,
        outcomes: Iterable[str] = ("ok",),
    ) -> list[str]:
        """The distinct subjects the actions in ``[start, end)`` touched, sorted."""
        where, params = self._window(agent, start, end, tools, outcomes, alias="s")
        rows = self._read(
            f"SELECT DISTINCT s.subject FROM tourniquet_action_subjects s WHERE {where} ORDER BY s.subject", params
        )
        return [row[0] for row in rows]

    def subject_actions(
        self,
        agent: str,
        start: datetime,
        end: datetime | None = None,
        *,
        tools: Iterable[str] | None = None,
    ) -> list[tuple[str, str, int]]:
        """``(subject, tool, actions)`` for every subject the window's successful actions touched, sorted:
        the list for customer communication."""
        where, params = self._window(agent, start, end, tools, ("ok",), alias="s")
        rows = self._read(
            f"SELECT s.subject, s.tool, COUNT(*) FROM tourniquet_action_subjects s WHERE {where} "
            "GROUP BY s.subject, s.tool ORDER BY s.subject, s.tool",
            params,
        )
        return [(subject, tool, int(count)) for subject, tool, count in rows]

    def blast_radius(
        self, agent: str, start: datetime, end: datetime | None = None, *, tools: Iterable[str] | None = None
    ) -> LedgerRadius:
        """Per tool, the successful actions in ``[start, end)``: how many, their distinct subjects, the sum of
        their declared amounts per unit, the first and last; plus the distinct subjects over every tool.
        Read in one snapshot."""
        tool_list = list(tools) if tools is not None else None
        where, params = self._window(agent, start, end, tool_list, ("ok",))
        subject_where, subject_params = self._window(agent, start, end, tool_list, ("ok",), alias="s")
        with self._transaction(write=False) as cur:
            totals = self._exec(
                cur,
                "SELECT a.tool, a.amount_unit, COUNT(*), SUM(a.amount), MIN(a.action_time), MAX(a.action_time) "
                f"FROM tourniquet_actions a WHERE {where} GROUP BY a.tool, a.amount_unit",
                params,
            ).fetchall()
            # DISTINCT in a subquery rather than COUNT(DISTINCT): PostgreSQL can hash it instead of sorting.
            per_tool = self._exec(
                cur,
                "SELECT d.tool, COUNT(*) FROM (SELECT DISTINCT s.tool, s.subject FROM tourniquet_action_subjects s "
                f"WHERE {subject_where}) d GROUP BY d.tool",
                subject_params,
            ).fetchall()
            overall = self._exec(
                cur,
                "SELECT COUNT(*) FROM (SELECT DISTINCT s.subject FROM tourniquet_action_subjects s "
                f"WHERE {subject_where}) d",
                subject_params,
            ).fetchone()
        subjects_by_tool = {tool: int(n) for tool, n in per_tool}
        grouped: dict[str, dict[str, Any]] = {}
        for tool, unit, count, total, first, last in totals:
            entry = grouped.setdefault(tool, {"actions": 0, "amounts": {}, "first": None, "last": None})
            entry["actions"] += int(count)
            if total is not None:
                entry["amounts"][unit or ""] = entry["amounts"].get(unit or "", 0) + int(total)
            first_time, last_time = self.dialect.from_db_time(first), self.dialect.from_db_time(last)
            entry["first"] = first_time if entry["first"] is None else min(entry["first"], first_time)
            entry["last"] = last_time if entry["last"] is None else max(entry["last"], last_time)
        radius = tuple(
            ToolRadius(
                tool=tool,
                actions=entry["actions"],
                subjects=subjects_by_tool.get(tool, 0),
                amounts=dict(sorted(entry["amounts"].items())),
                first=entry["first"],
                last=entry["last"],
            )
            for tool, entry in sorted(grouped.items())
        )
        return LedgerRadius(tools=radius, subjects=int(overall[0]) if overall else 0)

    def earlier_primary_subjects(
        self, agent: str, start: datetime, end: datetime | None = None, *, tools: Iterable[str] | None = None
    ) -> set[tuple[str, str]]:
        """``(tool, subject)`` pairs where the primary subject of a successful action in ``[start, end)`` had a
        successful action of the same tool *before* ``start``: what ``duplicatesOnly`` needs from beyond
        the window."""
        where, params = self._window(agent, start, end, tools, ("ok",), alias="w")
        rows = self._read(
            f"SELECT DISTINCT w.tool, w.subject FROM tourniquet_action_subjects w WHERE {where} "
            "AND w.position = 0 AND EXISTS (SELECT 1 FROM tourniquet_action_subjects p "
            "WHERE p.subject = w.subject AND p.agent = w.agent AND p.tool = w.tool AND p.position = 0 "
            "AND p.outcome = 'ok' AND p.action_time < ?)",
            [*params, self._time(start, "start")],
        )
        return {(tool, subject) for tool, subject in rows}
