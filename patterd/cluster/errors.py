"""The errors the cluster core raises."""

from __future__ import annotations


class ClusterError(Exception):
    """Something the cluster core could not do."""


class ClusterUnavailable(ClusterError):
    """The shared PostgreSQL database could not be reached (the cause may pass)."""


class NoLiveOwner(ClusterError, LookupError):
    """No live replica holds the call's media socket, so a command cannot be routed to it."""

    def __init__(self, call_id: str, carrier: str) -> None:
        super().__init__(f"no live replica holds call {call_id!r} ({carrier})")
        self.call_id = call_id
        self.carrier = carrier
