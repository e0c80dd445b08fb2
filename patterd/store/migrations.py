"""Versioned schema migrations, the same tables on SQLite and PostgreSQL.

Each migration is applied once, in order, inside one transaction that also records it in
``schema_version``; opening a store runs the missing ones. Add a migration by appending to
``MIGRATIONS`` (never edit an applied one). A database whose version is newer than the
newest migration here is refused: this patterd is older than the schema.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import StoreError

SCHEMA_VERSION_TABLE = {
    "sqlite": ("CREATE TABLE IF NOT EXISTS schema_version ("
               "version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"),
    "postgresql": ("CREATE TABLE IF NOT EXISTS schema_version ("
                   "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"),
}


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: its statements for each database."""

    version: int
    description: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]

    def statements(self, kind: str) -> tuple[str, ...]:
        """The statements for ``kind`` (``sqlite`` or ``postgresql``)."""
        return self.sqlite if kind == "sqlite" else self.postgresql


_CALLS = """CREATE TABLE calls (
    call_id     {ID} PRIMARY KEY,
    carrier     TEXT NOT NULL DEFAULT '',
    direction   TEXT NOT NULL DEFAULT 'inbound',
    from_number TEXT NOT NULL DEFAULT '',
    to_number   TEXT NOT NULL DEFAULT '',
    status      TEXT NOT NULL,
    outcome     TEXT,
    created_at  {FLOAT} NOT NULL,
    updated_at  {FLOAT} NOT NULL,
    ended_at    {FLOAT},
    dtmf        TEXT NOT NULL DEFAULT '',
    cost        {JSON},
    history     {JSON} NOT NULL,
    events      {JSON} NOT NULL,
    transcript  {JSON} NOT NULL,
    turns       {JSON} NOT NULL
)"""

_RETENTION = """CREATE TABLE retention (
    id          {SERIAL},
    swept_at    {FLOAT} NOT NULL,
    older_than  {FLOAT} NOT NULL,
    cutoff      {FLOAT} NOT NULL,
    deleted     BIGINT NOT NULL
)"""

# Lists page newest first by (created_at, call_id); the status filter matches status or outcome;
# retention deletes by ended_at (and updated_at for calls never marked ended).
_INDEXES = (
    "CREATE INDEX calls_created_idx ON calls (created_at DESC, call_id DESC)",
    "CREATE INDEX calls_status_idx ON calls (status, created_at DESC, call_id DESC)",
    "CREATE INDEX calls_outcome_idx ON calls (outcome, created_at DESC, call_id DESC)",
    "CREATE INDEX calls_ended_idx ON calls (ended_at) WHERE ended_at IS NOT NULL",
    "CREATE INDEX calls_stale_idx ON calls (updated_at) WHERE ended_at IS NULL",
    "CREATE INDEX retention_swept_idx ON retention (swept_at)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "calls and retention",
        sqlite=(
            # BINARY collation: call ids compare by code point, as Python's str does.
            _CALLS.format(ID="TEXT", FLOAT="REAL", JSON="TEXT"),
            _RETENTION.format(SERIAL="INTEGER PRIMARY KEY AUTOINCREMENT", FLOAT="REAL"),
            *_INDEXES,
        ),
        postgresql=(
            # "C" collation: byte order of UTF-8 = code-point order, as Python's str compares
            # (the admin API's cursor order must not depend on the server's locale).
            _CALLS.format(ID='TEXT COLLATE "C"', FLOAT="DOUBLE PRECISION", JSON="JSONB"),
            _RETENTION.format(SERIAL="BIGSERIAL PRIMARY KEY", FLOAT="DOUBLE PRECISION"),
            *_INDEXES,
        ),
    ),
)

# Each writer's latest snapshot of a call (replicas each see part of a call); the calls row is
# their merge (store/merge.py). PostgreSQL only writes here; SQLite has one writer.
_PARTS = """CREATE TABLE call_parts (
    call_id     {ID} NOT NULL,
    writer      TEXT NOT NULL,
    first_at    {FLOAT} NOT NULL,
    updated_at  {FLOAT} NOT NULL,
    data        {JSON} NOT NULL,
    PRIMARY KEY (call_id, writer)
)"""

MIGRATIONS = MIGRATIONS + (
    Migration(
        2, "call parts of several writers",
        sqlite=(_PARTS.format(ID="TEXT", FLOAT="REAL", JSON="TEXT"),),
        postgresql=(_PARTS.format(ID='TEXT COLLATE "C"', FLOAT="DOUBLE PRECISION",
                                  JSON="JSONB"),),
    ),
)

# The processes writing the store, for crash recovery with SQLite (one host): who a call's part
# belongs to, whether that process still runs (host, pid, start), its last heartbeat, and which
# process is recovering its calls once it died. PostgreSQL replicas use the cluster's tables.
_PROCESSES = """CREATE TABLE processes (
    writer      TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    start_id    TEXT NOT NULL,
    started_at  {FLOAT} NOT NULL,
    beat_at     {FLOAT} NOT NULL,
    reaped_by   TEXT
)"""

# Keys seen once (a Telnyx event id within its replay window, a spent media-stream token), so
# that a replay after a restart is still refused; rows past ``expires_at`` are deleted lazily.
_SEEN = """CREATE TABLE seen_keys (
    key         TEXT PRIMARY KEY,
    expires_at  {FLOAT} NOT NULL
)"""

MIGRATIONS = MIGRATIONS + (
    Migration(
        3, "processes writing the store",
        sqlite=(_PROCESSES.format(FLOAT="REAL"),),
        postgresql=(_PROCESSES.format(FLOAT="DOUBLE PRECISION"),),
    ),
    Migration(
        4, "keys seen once",
        sqlite=(_SEEN.format(FLOAT="REAL"),
                "CREATE INDEX seen_keys_expires_idx ON seen_keys (expires_at)"),
        postgresql=(_SEEN.format(FLOAT="DOUBLE PRECISION"),
                    "CREATE INDEX seen_keys_expires_idx ON seen_keys (expires_at)"),
    ),
)

LATEST = MIGRATIONS[-1].version


def pending(current: int) -> list[Migration]:
    """The migrations after ``current``; an error if the database is newer than this code."""
    if current > LATEST:
        raise StoreError(f"store.url: the database schema is version {current}, newer than "
                         f"this patterd knows ({LATEST}); upgrade patterd")
    return [m for m in MIGRATIONS if m.version > current]
