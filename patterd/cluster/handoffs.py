"""The shared store of calls being handed off (PostgreSQL, ``patterd_handoffs``).

A draining replica writes a call's conversation state under a random id before it asks the
carrier to move the call's media; the replica that gets the new stream takes it — once: the
row is deleted as it is read, so a replayed stream finds nothing to resume. Rows nobody took
(a hand-off that failed) are cleaned after an hour with the other cluster tables.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .node import ClusterNode

KEEP_SECONDS = 3600.0

PUT = """INSERT INTO patterd_handoffs (id, call_id, carrier, from_replica, state)
VALUES ($1, $2, $3, $4, $5::jsonb)"""
TAKE = """DELETE FROM patterd_handoffs WHERE id = $1 AND call_id = $2 AND carrier = $3
RETURNING from_replica, state::text AS state"""
FORGET = """UPDATE patterd_handoffs SET state = '{"cancelled": true}'::jsonb WHERE id = $1"""
CLEAN = "DELETE FROM patterd_handoffs WHERE created_at < now() - make_interval(secs => $1)"


async def put_handoff(node: "ClusterNode", handoff_id: str, call_id: str, carrier: str,
                      state: dict[str, Any]) -> None:
    """Store ``state`` for the replica that resumes the call (raises if the store is away)."""
    await node._execute(PUT, handoff_id, call_id, carrier, node.replica_id,
                        json.dumps(state, separators=(",", ":"), default=str))


async def take_handoff(node: "ClusterNode", handoff_id: str, call_id: str, carrier: str
                       ) -> tuple[str, dict[str, Any]] | None:
    """The state stored for this hand-off of this call and the replica it came from, taken
    (deleted) at once; None when there is none (never stored, taken already, or expired)."""
    rows = await node._fetch(TAKE, handoff_id, call_id, carrier)
    if not rows:
        return None
    state = json.loads(rows[0]["state"])
    return str(rows[0]["from_replica"]), state if isinstance(state, dict) else {}


async def forget_handoff(node: "ClusterNode", handoff_id: str) -> None:
    """A hand-off given up (the call stays where it was): a stream that still comes for it
    takes ``{"cancelled": true}`` instead of the state."""
    await node._execute(FORGET, handoff_id)


__all__ = ["CLEAN", "KEEP_SECONDS", "forget_handoff", "put_handoff", "take_handoff"]
