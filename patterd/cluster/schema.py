"""The cluster tables (PostgreSQL only), created idempotently when a node starts.

Every replica runs ``ensure_schema`` at start; a transaction-scoped advisory lock makes
replicas that start together create the tables once (concurrent ``CREATE TABLE IF NOT
EXISTS`` can otherwise fail on the catalog's unique index).

- ``patterd_replicas``: one row per live process, its heartbeat (the database's clock, so
  replicas' clocks never need to agree) and whether it drains.
- ``patterd_call_owners``: which replica holds a call's media socket.
- ``patterd_call_commands``: commands for a call's owner, claimed once, with their result.
  ``submitted_by`` (beyond the minimum) names the replica to notify when the result is in.
- ``patterd_deliveries``: keys of webhook deliveries some replica has processed (6 h).
- ``patterd_handoffs``: the state of a call a draining replica is moving, taken once by the
  replica that gets its new stream (1 h).
"""

from __future__ import annotations

from typing import Any

SCHEMA_LOCK = 0x7061_7474_6572_6363   # "patterc c": distinct from the store's migration lock

STATEMENTS: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS patterd_replicas (
        id           TEXT PRIMARY KEY,
        started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
        heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        draining     BOOLEAN NOT NULL DEFAULT FALSE
    )""",
    """CREATE TABLE IF NOT EXISTS patterd_call_owners (
        call_id    TEXT NOT NULL,
        carrier    TEXT NOT NULL,
        replica_id TEXT NOT NULL,
        since      TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (call_id, carrier)
    )""",
    "CREATE INDEX IF NOT EXISTS patterd_call_owners_replica_idx "
    "ON patterd_call_owners (replica_id)",
    """CREATE TABLE IF NOT EXISTS patterd_call_commands (
        id             BIGSERIAL PRIMARY KEY,
        call_id        TEXT NOT NULL,
        carrier        TEXT NOT NULL,
        kind           TEXT NOT NULL,
        args           JSONB NOT NULL DEFAULT '{}'::jsonb,
        created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
        target_replica TEXT NOT NULL,
        submitted_by   TEXT NOT NULL DEFAULT '',
        claimed_by     TEXT,
        claimed_at     TIMESTAMPTZ,
        done_at        TIMESTAMPTZ,
        result         JSONB
    )""",
    # What a replica polls for, what the reaper and a clean stop answer, what cleanup deletes.
    "CREATE INDEX IF NOT EXISTS patterd_call_commands_pending_idx "
    "ON patterd_call_commands (target_replica, id) WHERE claimed_by IS NULL",
    "CREATE INDEX IF NOT EXISTS patterd_call_commands_open_idx "
    "ON patterd_call_commands (target_replica) WHERE done_at IS NULL",
    "CREATE INDEX IF NOT EXISTS patterd_call_commands_done_idx "
    "ON patterd_call_commands (done_at) WHERE done_at IS NOT NULL",
    # Webhook deliveries already processed by some replica (a redelivery may land elsewhere).
    """CREATE TABLE IF NOT EXISTS patterd_deliveries (
        key     TEXT PRIMARY KEY,
        seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX IF NOT EXISTS patterd_deliveries_seen_idx ON patterd_deliveries (seen_at)",
    """CREATE TABLE IF NOT EXISTS patterd_handoffs (
        id           TEXT PRIMARY KEY,
        call_id      TEXT NOT NULL,
        carrier      TEXT NOT NULL,
        from_replica TEXT NOT NULL,
        state        JSONB NOT NULL,
        created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX IF NOT EXISTS patterd_handoffs_created_idx ON patterd_handoffs (created_at)",
)


async def ensure_schema(conn: Any) -> None:
    """Create the cluster tables and indexes if missing, once even under concurrent starts."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        for statement in STATEMENTS:
            await conn.execute(statement)
