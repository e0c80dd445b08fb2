"""The store's interface and its errors, shared by the SQLite and PostgreSQL back ends."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

#: A call never marked ended (a crashed replica's) is swept only once it has not been updated
#: for at least this long, and for the retention period.
STALE_AFTER = 86_400.0


class StoreError(Exception):
    """A store problem; at open time the message names ``store.url`` and says what to fix."""


class StoreUnavailable(StoreError):
    """Transient: the database cannot be reached or written just now (server down, connection
    lost, SQLite file locked or read-only). Retrying later may succeed."""


class StoreDataError(StoreError):
    """The record itself cannot be stored (a value the database refuses); retrying won't help."""


class Store(abc.ABC):
    """Persistent call records: one row per call, a full snapshot each time it is written.

    Records are dicts shaped like the admin API's ``GET /v1/calls/{id}`` answer
    (``patterd.web.admin.detail``) plus ``cost`` and ``updated_at``; lists hold the
    ``summary`` shape, newest first by ``(created_at, call_id)``.
    """

    #: ``sqlite`` or ``postgresql``
    kind: str = ""

    async def upsert_call(self, record: dict[str, Any]) -> None:
        """Insert or replace the call ``record["call_id"]`` with this snapshot."""
        await self.upsert_calls([record])

    @abc.abstractmethod
    async def upsert_calls(self, records: Sequence[dict[str, Any]]) -> None:
        """Insert or replace several calls in one transaction (all or none)."""

    @abc.abstractmethod
    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        """The full record, or None."""

    @abc.abstractmethod
    async def list_calls(self, limit: int, status: str | None = None,
                         cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """A page of call summaries, newest first by ``(created_at, call_id)``.

        ``status`` keeps calls whose status *or* outcome equals it; ``cursor`` (from a previous
        page) continues after that page's last call. Returns the page and the next page's
        cursor, or None when there are no more calls. A malformed cursor is a ``ValueError``.
        """

    @abc.abstractmethod
    async def sweep(self, older_than_seconds: float, stale_after: float = STALE_AFTER) -> int:
        """Retention: delete calls that ended more than ``older_than_seconds`` ago, and calls
        never marked ended (a crashed replica's) not updated for that long nor for
        ``stale_after`` seconds (at least STALE_AFTER, a day; the daemon passes twice
        ``agent.max_call_seconds`` when that is longer, so a call that may still be live is
        never swept). Returns how many were deleted; the sweep is logged in the ``retention``
        table."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The highest migration applied."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection(s) or worker thread; idempotent."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
