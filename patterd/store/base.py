"""The store's interface and its errors, shared by the SQLite and PostgreSQL back ends."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import CallFilter

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


@contextlib.asynccontextmanager
async def _always_mine() -> AsyncIterator[bool]:
    yield True


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
    async def upsert_calls(self, records: Sequence[dict[str, Any]],
                           writer: str | None = None) -> None:
        """Store this process's snapshots of several calls in one transaction (all or none).

        Each writer's latest snapshot of a call is kept apart (``call_parts``) and the call's
        row is the merge of them (:mod:`.merge`): a replica that saw only part of a call, or
        this process after a restart, never erases what another writer recorded. ``writer``
        overrides this process's own name (for a part such as the carrier's price)."""

    async def add_carrier_price(self, call_id: str, price: float) -> bool:
        """Record the carrier's own price of a stored call (in place of our estimate);
        False when the call is not in the store."""
        from .merge import PRICE_WRITER, carrier_price_part
        record = await self.get_call(call_id)
        if record is None:
            return False
        await self.upsert_calls([carrier_price_part(record, price)], writer=PRICE_WRITER)
        return True

    @abc.abstractmethod
    async def first_seen(self, key: str, ttl: float) -> bool:
        """True the first time ``key`` is offered within ``ttl`` seconds (and it is remembered
        for that long, across restarts and replicas); False when it was seen already."""

    @abc.abstractmethod
    async def unpriced_calls(self, carrier: str, ended_from: float, ended_before: float,
                             limit: int = 100) -> list[str]:
        """Ids of ``carrier``'s calls that ended in ``[ended_from, ended_before)``, were
        billed and still carry our estimate of the carrier cost, oldest end first."""

    async def call_parts(self, call_id: str) -> list[tuple[str, dict[str, Any]]]:
        """Each writer's latest snapshot of the call: ``(writer, snapshot)``, oldest writer
        first (what a crash recovery reads: the dead writer's own part)."""
        raise NotImplementedError

    #: Whether this store keeps the ``processes`` table of its writers (SQLite: every writer
    #: runs on this host, so a dead one's calls can be found and recovered; see
    #: :mod:`patterd.call.recovery`). PostgreSQL replicas use the cluster's reaper instead.
    tracks_processes: bool = False

    def exclusive(self, name: str) -> contextlib.AbstractAsyncContextManager[bool]:
        """``async with store.exclusive(name) as mine``: True when this process may do the
        periodic job ``name`` now (no other replica is doing it). One process per SQLite
        file: always True."""
        return _always_mine()

    @abc.abstractmethod
    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        """The full record, or None."""

    @abc.abstractmethod
    async def list_calls(self, limit: int, status: str | None = None,
                         cursor: str | None = None, *, where: CallFilter | None = None,
                         full: bool = False) -> tuple[list[dict[str, Any]], str | None]:
        """A page of call summaries, newest first by ``(created_at, call_id)``.

        ``status`` keeps calls whose status *or* outcome equals it; ``where`` narrows the
        list further (time, outcome, direction, carrier); ``cursor`` (from a previous page)
        continues after that page's last call; ``full``: whole records instead of summaries.
        Returns the page and the next page's cursor, or None when there are no more calls.
        A malformed cursor is a ``ValueError``.
        """

    async def call_stats(self, where: CallFilter, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` calls ``where`` selects, newest first, each with only what an
        overview needs (``STATS_COLUMNS``: ids, carrier, direction, status, outcome, times,
        cost and turns)."""
        raise NotImplementedError

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
