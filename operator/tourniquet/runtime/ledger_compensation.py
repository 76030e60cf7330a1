"""The ledger in standard SQL, its second half: compensation claims (exactly once per incident and action)
and the incident lease of the compensation worker."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from tourniquet.runtime.ledger_actions import SqlActions
from tourniquet.runtime.ledger_records import (
    BATCH,
    CLAIMED,
    COMPENSATION_OUTCOMES,
    CompensationRecord,
    LedgerError,
    UnknownAction,
    utcnow,
)
from tourniquet.runtime.ledger_schema import _COMPENSATION_COLUMNS, _chunks, _claimer, _marks


class SqlLedger(SqlActions):
    """The ledger logic in standard SQL; subclasses supply connections and a :class:`SqlDialect`."""

    def claim_compensation(
        self, idempotency_key: str, incident: str, *, claimer: str | None = None, reclaim_after: timedelta | None = None
    ) -> bool:
        """Claim the compensation of one action for one incident: True for exactly one caller.

        A ``failed`` compensation may be claimed again; a claim older than ``reclaim_after`` (a crashed
        claimer) may be taken over. Raises :class:`UnknownAction` for a key the ledger never recorded.
        """
        now = utcnow()
        who = claimer or _claimer()
        with self._transaction(write=True) as cur:
            if (
                self._exec(
                    cur, "SELECT 1 FROM tourniquet_actions WHERE idempotency_key = ?", [idempotency_key]
                ).fetchone()
                is None
            ):
                raise UnknownAction(f"no action with idempotency key {idempotency_key!r} is in the ledger")
            inserted = self._exec(
                cur,
                f"INSERT INTO tourniquet_compensations ({_COMPENSATION_COLUMNS}) VALUES (?, ?, ?, 1, ?, ?, NULL, NULL) "
                "ON CONFLICT (incident, idempotency_key) DO NOTHING",
                [idempotency_key, incident, CLAIMED, who, self.dialect.to_db_time(now)],
            ).rowcount
            if inserted == 1:
                return True
            retry = "state = 'failed'"
            params: list[Any] = [CLAIMED, who, self.dialect.to_db_time(now), incident, idempotency_key]
            if reclaim_after is not None:
                retry += " OR (state = ? AND claimed_at < ?)"
                params += [CLAIMED, self.dialect.to_db_time(now - reclaim_after)]
            reclaimed = self._exec(
                cur,
                "UPDATE tourniquet_compensations SET state = ?, attempts = attempts + 1, claimed_by = ?, "
                "claimed_at = ?, completed_at = NULL, detail = NULL "
                f"WHERE incident = ? AND idempotency_key = ? AND ({retry})",
                params,
            ).rowcount
            return reclaimed == 1

    def claim_batch(self, incident: str, keys: Sequence[str], claimer: str) -> dict[str, int]:
        """Claim many compensations at once for a worker that holds the incident's lease (see
        :meth:`acquire_lease`): new ones, ``failed`` ones, and claims another holder left behind. Returns
        the keys now claimed by ``claimer`` with their claim count (more than 1: claimed before), in the
        order given; done, irreversible and skipped ones are not claimed.

        Only a lease holder may call this: taking over another's claim is safe only because no one else
        works on the incident while the lease is held.
        """
        if len(keys) > BATCH:
            raise ValueError(f"claim at most {BATCH} keys at once, not {len(keys)}")
        if not keys:
            return {}
        now = self.dialect.to_db_time(utcnow())
        unique = list(dict.fromkeys(keys))
        with self._transaction(write=True) as cur:
            known = {
                row[0]
                for row in self._exec(
                    cur,
                    f"SELECT idempotency_key FROM tourniquet_actions WHERE idempotency_key IN ({_marks(len(unique))})",
                    unique,
                ).fetchall()
            }
            missing = [k for k in unique if k not in known]
            if missing:
                raise UnknownAction(
                    f"{len(missing)} of the keys are not in the ledger (first: {missing[0]!r}); nothing was claimed"
                )
            values = ", ".join(["(?, ?, ?, 1, ?, ?, NULL, NULL)"] * len(unique))
            params: list[Any] = []
            for key in unique:
                params += [key, incident, CLAIMED, claimer, now]
            self._exec(
                cur,
                f"INSERT INTO tourniquet_compensations ({_COMPENSATION_COLUMNS}) VALUES {values} "
                "ON CONFLICT (incident, idempotency_key) DO NOTHING",
                params,
            )
            self._exec(
                cur,
                "UPDATE tourniquet_compensations SET state = ?, attempts = attempts + 1, claimed_by = ?, "
                "claimed_at = ?, completed_at = NULL, detail = NULL WHERE incident = ? "
                f"AND idempotency_key IN ({_marks(len(unique))}) "
                "AND (state = 'failed' OR (state = ? AND claimed_by <> ?))",
                [CLAIMED, claimer, now, incident, *unique, CLAIMED, claimer],
            )
            held = {
                row[0]: int(row[1])
                for row in self._exec(
                    cur,
                    "SELECT idempotency_key, attempts FROM tourniquet_compensations WHERE incident = ? AND state = ? "
                    f"AND claimed_by = ? AND idempotency_key IN ({_marks(len(unique))})",
                    [incident, CLAIMED, claimer, *unique],
                ).fetchall()
            }
        return {k: held[k] for k in unique if k in held}

    def complete_batch(self, incident: str, claimer: str, outcomes: Sequence[tuple[str, str, str | None]]) -> None:
        """Record how many claimed compensations ended: ``(key, outcome, detail)`` each, in one transaction.
        Raises :class:`LedgerError` (and records nothing) when one of them is no longer claimed by ``claimer``."""
        groups: dict[tuple[str, str | None], list[str]] = {}
        for key, outcome, detail in outcomes:
            if outcome not in COMPENSATION_OUTCOMES:
                raise ValueError(
                    f"unknown compensation outcome {outcome!r}; expected one of {', '.join(COMPENSATION_OUTCOMES)}"
                )
            groups.setdefault((outcome, detail), []).append(key)
        now = self.dialect.to_db_time(utcnow())
        with self._transaction(write=True) as cur:
            for (outcome, detail), keys in groups.items():
                for chunk in _chunks(keys):
                    updated = self._exec(
                        cur,
                        "UPDATE tourniquet_compensations SET state = ?, completed_at = ?, detail = ? "
                        "WHERE incident = ? AND claimed_by = ? AND state = ? "
                        f"AND idempotency_key IN ({_marks(len(chunk))})",
                        [outcome, now, detail, incident, claimer, CLAIMED, *chunk],
                    ).rowcount
                    if updated != len(set(chunk)):
                        raise LedgerError(
                            f"{len(set(chunk)) - updated} of the compensations being completed for incident "
                            f"{incident!r} are no longer claimed by {claimer}: another worker took them over "
                            "(a lost lease?)"
                        )

    def complete_compensation(
        self, idempotency_key: str, incident: str, outcome: str, *, detail: str | None = None
    ) -> None:
        """Record how a claimed compensation ended: ``done``, ``failed`` (may be claimed again),
        ``irreversible`` or ``skipped``.

        Completing again with the same outcome is a no-op (a retry after a crash); anything else that
        is not a current claim raises :class:`LedgerError`.
        """
        if outcome not in COMPENSATION_OUTCOMES:
            raise ValueError(
                f"unknown compensation outcome {outcome!r}; expected one of {', '.join(COMPENSATION_OUTCOMES)}"
            )
        with self._transaction(write=True) as cur:
            updated = self._exec(
                cur,
                "UPDATE tourniquet_compensations SET state = ?, completed_at = ?, detail = ? "
                "WHERE incident = ? AND idempotency_key = ? AND state = ?",
                [outcome, self.dialect.to_db_time(utcnow()), detail, incident, idempotency_key, CLAIMED],
            ).rowcount
            if updated == 1:
                return
            row = self._exec(
                cur,
                "SELECT state FROM tourniquet_compensations WHERE incident = ? AND idempotency_key = ?",
                [incident, idempotency_key],
            ).fetchone()
        if row is None:
            raise LedgerError(
                f"the compensation of {idempotency_key!r} for incident {incident!r} was never claimed: "
                "call claim_compensation first"
            )
        if row[0] != outcome:
            raise LedgerError(
                f"the compensation of {idempotency_key!r} for incident {incident!r} is already {row[0]}, "
                f"not claimed: it cannot become {outcome}"
            )

    def compensation_state(self, incident: str) -> dict[str, CompensationRecord]:
        """Every compensation claimed for an incident, by the action's idempotency key."""
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                f"SELECT {_COMPENSATION_COLUMNS} FROM tourniquet_compensations WHERE incident = ? "
                "ORDER BY idempotency_key",
                [incident],
            ).fetchall()
        records = {}
        for key, incident_name, state, attempts, claimed_by, claimed_at, completed_at, detail in rows:
            records[key] = CompensationRecord(
                idempotency_key=key,
                incident=incident_name,
                state=state,
                attempts=int(attempts),
                claimed_by=claimed_by,
                claimed_at=self.dialect.from_db_time(claimed_at),
                completed_at=self.dialect.from_db_time(completed_at) if completed_at is not None else None,
                detail=detail,
            )
        return records

    def compensation_counts(self, incident: str) -> dict[str, int]:
        """How many of an incident's compensations are in each state (``claimed``, ``done``, ...)."""
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                "SELECT state, COUNT(*) FROM tourniquet_compensations WHERE incident = ? GROUP BY state",
                [incident],
            ).fetchall()
        return {state: int(n) for state, n in sorted(rows)}

    def acquire_lease(self, incident: str, holder: str, ttl: timedelta) -> bool:
        """Become the one worker compensating ``incident`` until ``now + ttl`` (renew before then). True when
        ``holder`` holds it now: it was free, expired, or already its own."""
        now = utcnow()
        expires = self.dialect.to_db_time(now + ttl)
        with self._transaction(write=True) as cur:
            inserted = self._exec(
                cur,
                "INSERT INTO tourniquet_compensation_leases (incident, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (incident) DO NOTHING",
                [incident, holder, expires],
            ).rowcount
            if inserted == 1:
                return True
            taken = self._exec(
                cur,
                "UPDATE tourniquet_compensation_leases SET holder = ?, expires_at = ? "
                "WHERE incident = ? AND (holder = ? OR expires_at < ?)",
                [holder, expires, incident, holder, self.dialect.to_db_time(now)],
            ).rowcount
            return taken == 1

    def renew_lease(self, incident: str, holder: str, ttl: timedelta) -> bool:
        """Extend a lease ``holder`` still holds; False when it lost it (expired and taken by another)."""
        with self._transaction(write=True) as cur:
            return (
                self._exec(
                    cur,
                    "UPDATE tourniquet_compensation_leases SET expires_at = ? WHERE incident = ? AND holder = ?",
                    [self.dialect.to_db_time(utcnow() + ttl), incident, holder],
                ).rowcount
                == 1
            )

    def release_lease(self, incident: str, holder: str) -> None:
        with self._transaction(write=True) as cur:
            self._exec(
                cur, "DELETE FROM tourniquet_compensation_leases WHERE incident = ? AND holder = ?", [incident, holder]
            )

    def lease_holder(self, incident: str) -> tuple[str, datetime] | None:
        """Who holds the incident's lease and until when (possibly expired), or None."""
        with self._transaction(write=False) as cur:
            row = self._exec(
                cur, "SELECT holder, expires_at FROM tourniquet_compensation_leases WHERE incident = ?", [incident]
            ).fetchone()
        return (row[0], self.dialect.from_db_time(row[1])) if row else None
