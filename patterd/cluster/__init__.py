"""The cluster core: several patterd replicas sharing one PostgreSQL database.

- ``ClusterNode`` (one per process): heartbeats, call ownership (which replica holds a
  call's media socket), commands routed to that replica over LISTEN/NOTIFY and applied
  exactly once, and a reaper that hands a dead replica's calls to exactly one survivor.
- ``ensure_schema``: the ``patterd_replicas``, ``patterd_call_owners`` and
  ``patterd_call_commands`` tables, created idempotently.
"""

from __future__ import annotations

from .errors import ClusterError, ClusterUnavailable, NoLiveOwner
from .node import REPLICA_STOPPED, ClusterNode, ReplicaInfo, default_replica_id
from .reaper import REPLICA_LOST
from .queries import CHANNEL
from .schema import ensure_schema

__all__ = [
    "CHANNEL", "REPLICA_LOST", "REPLICA_STOPPED", "ClusterError", "ClusterNode",
    "ClusterUnavailable", "NoLiveOwner", "ReplicaInfo", "default_replica_id", "ensure_schema",
]
