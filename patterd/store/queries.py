"""The SQL both back ends run, written once and rendered with each one's placeholders."""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass

from .base import STALE_AFTER
from .records import COLUMNS, JSON_COLUMNS, STATS_COLUMNS, SUMMARY_COLUMNS, CallFilter

SWEEP_CHUNK = 5000


@dataclass(frozen=True, slots=True)
class Queries:
    """Statements for one database kind (``sqlite``: ``?``; ``postgresql``: ``$n``)."""

    kind: str

    def p(self, n: int, column: str = "") -> str:
        """The ``n``-th (1-based) placeholder, cast to jsonb for JSON columns on PostgreSQL."""
        if self.kind == "sqlite":
            return "?"
        return f"${n}::jsonb" if column in JSON_COLUMNS else f"${n}"

    @property
    def upsert(self) -> str:
        """Insert a full row or replace every column of the existing one."""
        values = ", ".join(self.p(i, c) for i, c in enumerate(COLUMNS, 1))
        sets = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "call_id")
        return (f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES ({values}) "
                f"ON CONFLICT (call_id) DO UPDATE SET {sets}")

    @property
    def get(self) -> str:
        """One full row by id."""
        return f"SELECT {', '.join(COLUMNS)} FROM calls WHERE call_id = {self.p(1)}"

    def page_args(self, limit: int, status: str | None, cursor: str | None,
                  where: CallFilter | None = None, *, full: bool = False
                  ) -> tuple[str, list[Any]]:
        """The page query and its parameters (one row more than ``limit``: is there more?);
        ``where`` narrows it, ``full`` reads whole records."""
        from .records import check_limit, decode_cursor
        check_limit(limit)
        clauses = list((where or CallFilter()).clauses())
        if status:
            clauses.insert(0, ("(status = {} OR outcome = {})", [status, status]))
        if cursor:
            clauses.append(("(created_at, call_id) < ({}, {})", list(decode_cursor(cursor))))
        sql, params = self._where(clauses)
        n = len(params)
        columns = COLUMNS if full else SUMMARY_COLUMNS
        params.append(limit + 1)
        return (f"SELECT {', '.join(columns)} FROM calls{sql} "
                f"ORDER BY created_at DESC, call_id DESC LIMIT {self.p(n + 1)}", params)

    def stats_args(self, where: CallFilter, limit: int) -> tuple[str, list[Any]]:
        """The newest ``limit`` calls ``where`` selects, as :data:`STATS_COLUMNS`."""
        sql, params = self._where(where.clauses())
        params.append(int(limit))
        return (f"SELECT {', '.join(STATS_COLUMNS)} FROM calls{sql} "
                f"ORDER BY created_at DESC, call_id DESC LIMIT {self.p(len(params))}", params)

    def _where(self, clauses: list[tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
        parts: list[str] = []
        params: list[Any] = []
        for template, values in clauses:
            marks = [self.p(len(params) + i + 1) for i in range(len(values))]
            parts.append(template.format(*marks))
            params.extend(values)
        return (f" WHERE {' AND '.join(parts)}" if parts else ""), params

    @property
    def part_count(self) -> str:
        """How many writers' parts a call has (parameter 1: the call id)."""
        return f"SELECT count(*) FROM call_parts WHERE call_id = {self.p(1)}"

    @property
    def part_upsert(self) -> str:
        """Insert or replace one writer's snapshot: call id, writer, first/updated at, data."""
        data = "$5::jsonb" if self.kind == "postgresql" else "?"
        return ("INSERT INTO call_parts (call_id, writer, first_at, updated_at, data) "
                f"VALUES ({self.p(1)}, {self.p(2)}, {self.p(3)}, {self.p(4)}, {data}) "
                "ON CONFLICT (call_id, writer) DO UPDATE "
                "SET updated_at = excluded.updated_at, data = excluded.data")

    @property
    def parts(self) -> str:
        """A call's parts, oldest writer first (parameter 1: the call id)."""
        return (f"SELECT data FROM call_parts WHERE call_id = {self.p(1)} "
                "ORDER BY first_at, writer")

    @property
    def parts_orphaned(self) -> str:
        """Delete the parts of calls that are gone (after a sweep)."""
        return ("DELETE FROM call_parts WHERE NOT EXISTS "
                "(SELECT 1 FROM calls c WHERE c.call_id = call_parts.call_id)")

    @property
    def parts_of(self) -> str:
        """A call's parts with their writers, oldest writer first (parameter 1: call id)."""
        return (f"SELECT writer, updated_at, data FROM call_parts WHERE call_id = {self.p(1)} "
                "ORDER BY first_at, writer")

    @property
    def unended_parts(self) -> str:
        """Every part of every call not marked ended (the calls' partial index on
        ``updated_at WHERE ended_at IS NULL`` finds them), oldest writer first."""
        return ("SELECT p.call_id, p.writer, p.updated_at, p.data FROM calls c "
                "JOIN call_parts p ON p.call_id = c.call_id "
                "WHERE c.ended_at IS NULL ORDER BY p.call_id, p.first_at, p.writer")

    @property
    def process_register(self) -> str:
        """This process writes the store: writer, host, pid, start id, started at, beat at."""
        return ("INSERT INTO processes (writer, host, pid, start_id, started_at, beat_at) "
                f"VALUES ({', '.join(self.p(i) for i in range(1, 7))}) "
                "ON CONFLICT (writer) DO UPDATE SET beat_at = excluded.beat_at, reaped_by = NULL")

    @property
    def process_beat(self) -> str:
        """A heartbeat: beat at (p1) of writer p2."""
        return f"UPDATE processes SET beat_at = {self.p(1)} WHERE writer = {self.p(2)}"

    @property
    def processes(self) -> str:
        """Every process registered as a writer."""
        return ("SELECT writer, host, pid, start_id, started_at, beat_at, reaped_by "
                "FROM processes")

    @property
    def process_claim(self) -> str:
        """Recovering a dead process's calls: reaped_by = p1 for writer p2 if reaped_by is
        still p3 (None: nobody yet) — one recoverer only."""
        same = "IS" if self.kind == "sqlite" else "IS NOT DISTINCT FROM"
        return (f"UPDATE processes SET reaped_by = {self.p(1)} WHERE writer = {self.p(2)} "
                f"AND reaped_by {same} {self.p(3)}")

    @property
    def process_forget(self) -> str:
        """A process gone (stopped, or dead and its calls recovered): writer p1."""
        return f"DELETE FROM processes WHERE writer = {self.p(1)}"

    @property
    def unpriced(self) -> str:
        """Ended calls of a carrier (p1) that ended between p2 and p3, were billed (billed
        seconds > 0) and still carry our estimate of the carrier cost; at most p4, oldest
        end first."""
        if self.kind == "postgresql":
            source = "cost->>'carrier_source'"
            billed = "(cost->>'billed_seconds')::double precision"
        else:
            source = "json_extract(cost, '$.carrier_source')"
            billed = "json_extract(cost, '$.billed_seconds')"
        return (f"SELECT call_id FROM calls WHERE carrier = {self.p(1)} "   # in order: ? binds so
                f"AND ended_at >= {self.p(2)} AND ended_at < {self.p(3)} "
                f"AND {source} = 'estimate' AND {billed} > 0 "
                f"ORDER BY ended_at, call_id LIMIT {self.p(4)}")

    @property
    def sweep_ended(self) -> str:
        """Delete up to SWEEP_CHUNK calls that ended before the cutoff (parameter 1)."""
        return (f"DELETE FROM calls WHERE call_id IN (SELECT call_id FROM calls "
                f"WHERE ended_at IS NOT NULL AND ended_at < {self.p(1)} LIMIT {SWEEP_CHUNK})")

    @property
    def sweep_stale(self) -> str:
        """Delete up to SWEEP_CHUNK never-ended calls last updated before parameter 1
        (``stale_cutoff``: a crashed replica's leftovers)."""
        return (f"DELETE FROM calls WHERE call_id IN (SELECT call_id FROM calls "
                f"WHERE ended_at IS NULL AND updated_at < {self.p(1)} LIMIT {SWEEP_CHUNK})")

    @property
    def log_sweep(self) -> str:
        """Record a sweep: swept_at, older_than, cutoff, deleted."""
        return (f"INSERT INTO retention (swept_at, older_than, cutoff, deleted) "
                f"VALUES ({self.p(1)}, {self.p(2)}, {self.p(3)}, {self.p(4)})")

    @property
    def trim_sweeps(self) -> str:
        """Forget sweep records older than the cutoff (the table stays small)."""
        return f"DELETE FROM retention WHERE swept_at < {self.p(1)}"

    @staticmethod
    def cutoffs(now: float, older_than: float,
                stale_after: float = STALE_AFTER) -> tuple[float, float]:
        """``(cutoff for ended calls, cutoff for never-ended ones)``: a call never marked
        ended goes only once it has not been updated for the retention period nor for
        ``stale_after`` seconds (at least STALE_AFTER), so a live call is never swept."""
        cutoff = now - older_than
        return cutoff, min(cutoff, now - max(STALE_AFTER, stale_after))

    @property
    def current_version(self) -> str:
        """The highest applied migration (0 for none)."""
        return "SELECT COALESCE(MAX(version), 0) FROM schema_version"

    @property
    def record_version(self) -> str:
        """Mark a migration applied: version, applied_at."""
        return (f"INSERT INTO schema_version (version, applied_at) "
                f"VALUES ({self.p(1)}, {self.p(2)})")
