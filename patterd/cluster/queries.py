"""The SQL of the cluster core; each hot-path step is one statement (one round trip).

``$ttl`` parameters are seconds (float); liveness is judged with the database's ``now()``.
Notification payloads on channel ``patterd_cluster``: ``<target>:<id>`` (a command for
``target``) and ``<submitter>:done:<id>`` (its result is stored).
"""

from __future__ import annotations

CHANNEL = "patterd_cluster"

_ALIVE = "r.heartbeat_at > now() - make_interval(secs => {p}::float8)"

REGISTER = """INSERT INTO patterd_replicas (id, started_at, heartbeat_at, draining)
VALUES ($1, now(), now(), $2)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), draining = excluded.draining"""

# The heartbeat also counts the other replicas that look dead, so the reaper only opens a
# transaction when there is something to reap. No row back: we were reaped (see node).
HEARTBEAT = """UPDATE patterd_replicas SET heartbeat_at = now(), draining = $2 WHERE id = $1
RETURNING (SELECT count(*) FROM patterd_replicas d WHERE d.id <> $1
           AND d.heartbeat_at < now() - make_interval(secs => $3::float8)) AS dead"""

CLAIM_CALL = """INSERT INTO patterd_call_owners (call_id, carrier, replica_id, since)
VALUES ($1, $2, $3, now())
ON CONFLICT (call_id, carrier) DO UPDATE SET replica_id = excluded.replica_id, since = now()"""

# Unclaimed commands for the call still aimed at its previous owner now come here.
ADOPT_COMMANDS = """UPDATE patterd_call_commands SET target_replica = $3
WHERE call_id = $1 AND carrier = $2 AND claimed_by IS NULL AND target_replica <> $3
RETURNING id"""

RELEASE_CALL = """DELETE FROM patterd_call_owners
WHERE call_id = $1 AND carrier = $2 AND replica_id = $3"""

OWNER_OF = f"""SELECT o.replica_id FROM patterd_call_owners o
JOIN patterd_replicas r ON r.id = o.replica_id
WHERE o.call_id = $1 AND o.carrier = $2 AND {_ALIVE.format(p='$3')}"""

SUBMIT = f"""WITH owner AS (
    SELECT o.replica_id FROM patterd_call_owners o
    JOIN patterd_replicas r ON r.id = o.replica_id
    WHERE o.call_id = $1 AND o.carrier = $2 AND {_ALIVE.format(p='$5')}
), ins AS (
    INSERT INTO patterd_call_commands (call_id, carrier, kind, args, target_replica,
                                       submitted_by)
    SELECT $1, $2, $3, $4::jsonb, owner.replica_id, $6 FROM owner
    RETURNING id, target_replica
)
SELECT ins.id, ins.target_replica,
       pg_notify('{CHANNEL}', ins.target_replica || ':' || ins.id)::text AS notified
FROM ins"""

# Claim exactly once: only unclaimed commands aimed here, and only while no OTHER live
# replica owns the call (it moved, e.g. a re-attached stream: see RETARGET).
CLAIM = f"""UPDATE patterd_call_commands c SET claimed_by = $1, claimed_at = now()
WHERE c.target_replica = $1 AND c.claimed_by IS NULL AND (c.id = ANY($2::bigint[]) OR $3)
  AND NOT EXISTS (
    SELECT 1 FROM patterd_call_owners o JOIN patterd_replicas r ON r.id = o.replica_id
    WHERE o.call_id = c.call_id AND o.carrier = c.carrier AND o.replica_id <> $1
      AND {_ALIVE.format(p='$4')})
RETURNING c.id, c.call_id, c.carrier, c.kind, c.args::text AS args, c.submitted_by"""

RETARGET = f"""WITH moved AS (
    UPDATE patterd_call_commands c SET target_replica = o.replica_id
    FROM patterd_call_owners o JOIN patterd_replicas r ON r.id = o.replica_id
    WHERE c.target_replica = $1 AND c.claimed_by IS NULL AND (c.id = ANY($2::bigint[]) OR $3)
      AND o.call_id = c.call_id AND o.carrier = c.carrier AND o.replica_id <> $1
      AND {_ALIVE.format(p='$4')}
    RETURNING c.id, c.target_replica
)
SELECT id, pg_notify('{CHANNEL}', target_replica || ':' || id)::text FROM moved"""

FINISH = f"""WITH d AS (
    UPDATE patterd_call_commands SET done_at = now(), result = $2::jsonb
    WHERE id = $1 AND done_at IS NULL RETURNING id, submitted_by
)
SELECT id, pg_notify('{CHANNEL}', submitted_by || ':done:' || id)::text FROM d"""

RESULT = """SELECT result::text FROM patterd_call_commands
WHERE id = $1 AND done_at IS NOT NULL"""

# Answer every command still open for a replica (dead or stopping) with an error result.
ANSWER_OPEN = f"""WITH a AS (
    UPDATE patterd_call_commands
    SET claimed_by = coalesce(claimed_by, $2), claimed_at = coalesce(claimed_at, now()),
        done_at = now(), result = $3::jsonb
    WHERE target_replica = $1 AND done_at IS NULL RETURNING id, submitted_by
)
SELECT id, pg_notify('{CHANNEL}', submitted_by || ':done:' || id)::text FROM a"""

# The reaper: lock dead replicas' rows (a racing survivor skips them), move their calls.
LOCK_DEAD = """SELECT id FROM patterd_replicas
WHERE id <> $1 AND heartbeat_at < now() - make_interval(secs => $2::float8)
ORDER BY id LIMIT 32 FOR UPDATE SKIP LOCKED"""

TAKE_OVER = """UPDATE patterd_call_owners SET replica_id = $2, since = now()
WHERE replica_id = $1 RETURNING call_id, carrier"""

DELETE_REPLICA = "DELETE FROM patterd_replicas WHERE id = $1"

DELETE_OWNERS = "DELETE FROM patterd_call_owners WHERE replica_id = $1"

CLEAN_DONE = """DELETE FROM patterd_call_commands
WHERE done_at < now() - make_interval(secs => $1::float8)"""

LIVE_REPLICAS = f"""SELECT r.id, r.started_at, r.heartbeat_at, r.draining
FROM patterd_replicas r WHERE {_ALIVE.format(p='$1')} ORDER BY r.id"""

FIRST_DELIVERY = """INSERT INTO patterd_deliveries (key) VALUES ($1)
ON CONFLICT (key) DO NOTHING RETURNING 1"""

# A media stream of the call was held by some replica (kept with the deliveries, 6 h): a
# replica that only gets the carrier's final status leaves counting and pricing to it.
STREAM_SEEN_KEY = "stream:{carrier}:{call_id}"
MARK_STREAM = """INSERT INTO patterd_deliveries (key) VALUES ($1) ON CONFLICT (key) DO NOTHING"""
STREAM_SEEN = """SELECT EXISTS (SELECT 1 FROM patterd_deliveries WHERE key = $1)"""

CLEAN_DELIVERIES = """DELETE FROM patterd_deliveries
WHERE seen_at < now() - make_interval(secs => $1::float8)"""
