"""The owner's side of cluster commands: notifications in, claims, application in order.

A mixin of :class:`~patterd.cluster.node.ClusterNode` (which owns the state it uses): a
notification ``<me>:<id>`` wakes the dispatcher, which claims the command exactly once
(``claimed_by IS NULL``), runs ``on_command`` — one call's commands in id order, calls in
parallel — and stores the result, which notifies the submitter (``<submitter>:done:<id>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from ..ops.logging import get_logger
from ..ops.supervise import Supervisor
from . import queries as Q
from .errors import ClusterUnavailable

log = get_logger("patterd.cluster")

MAX_COMMAND_ID = 2**63 - 1   # the ids are PostgreSQL bigints


class CommandDispatch:
    """Receiving and applying the commands aimed at this replica."""

    replica_id: str
    supervisor: Supervisor
    poll_every: float
    dead_after: float
    _wake: asyncio.Event
    _wanted: set[int]
    _poll_all: bool
    _waiters: dict[int, asyncio.Future[None]]
    _chains: dict[tuple[str, str], asyncio.Task[None]]
    _on_command: Callable[[str, str, str, dict[str, Any]], Awaitable[dict[str, Any]]]

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        raise NotImplementedError

    def _on_payload(self, payload: str) -> None:
        """A notification on the channel (from asyncpg's listener callback): never raises; a
        malformed one is reported and dropped, so that it cannot poison the claims."""
        try:
            head, _, tail = payload.rpartition(":")
            if head != self.replica_id and head != f"{self.replica_id}:done":
                return        # another replica's (the channel is shared)
            command_id = int(tail) if tail.isascii() and tail.isdigit() else 0
            if not 0 < command_id <= MAX_COMMAND_ID:
                raise ValueError(f"malformed notification {payload[:80]!r}")
            if head == self.replica_id:
                self._want((command_id,))
            else:
                fut = self._waiters.get(command_id)
                if fut is not None and not fut.done():
                    fut.set_result(None)   # a wake-up: wait_result reads the row itself
        except Exception as exc:  # noqa: BLE001 - one notification only
            self.supervisor.report("cluster_listener", exc)

    def _on_listen_connected(self) -> None:
        self._poll_all = True
        self._wake.set()
        for fut in self._waiters.values():   # results may have been missed too
            if not fut.done():
                fut.set_result(None)

    def _want(self, ids: Any) -> None:
        self._wanted.update(ids)
        self._wake.set()

    # ------------------------------------------------------------------ applying commands

    async def _dispatch_loop(self) -> None:
        """Claim what was notified (or, on a poll, everything aimed here), in id order."""
        backoff = 0.05
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_every)
            if not self._wake.is_set():
                self._poll_all = True   # the periodic poll
            self._wake.clear()
            ids, self._wanted = list(self._wanted), set()
            poll_all, self._poll_all = self._poll_all, False
            try:
                claimed = await self._fetch(Q.CLAIM, self.replica_id, ids, poll_all,
                                            self.dead_after)
                if poll_all or len(claimed) < len(ids):
                    await self._fetch(Q.RETARGET, self.replica_id, ids, poll_all,
                                      self.dead_after)
            except ClusterUnavailable as exc:
                # The next round polls everything aimed here, so the notified ids are not
                # kept: one that cannot be claimed must never block the others.
                log.warning("cluster_claim_failed", error=str(exc), retry_in=backoff)
                self._poll_all = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            for row in sorted(claimed, key=lambda r: r["id"]):
                try:
                    self._start_command(row)
                except Exception as exc:  # noqa: BLE001 - this row only
                    self.supervisor.report("cluster_dispatch", exc,
                                           call_id=str(_field(row, "call_id")))

    def _start_command(self, row: Any) -> None:
        key = (row["call_id"], row["carrier"])
        previous = self._chains.get(key)
        task = asyncio.get_running_loop().create_task(self._apply(row, previous))
        self._chains[key] = task
        task.add_done_callback(lambda t: self._chains.pop(key, None)
                               if self._chains.get(key) is t else None)

    async def _apply(self, row: Any, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait((previous,))   # one call's commands run in order
        command_id = int(row["id"])
        try:
            result = await self._on_command(row["call_id"], row["carrier"], row["kind"],
                                            json.loads(row["args"]))
            if not isinstance(result, dict):
                result = {"ok": True, "value": result}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("cluster_command_failed", call_id=row["call_id"], kind=row["kind"],
                        error=repr(exc))
            result = {"ok": False, "error": str(exc) or type(exc).__name__}
        payload = json.dumps(result, default=str)
        delay = 0.05
        while True:   # the command was applied: its result must be stored
            try:
                await self._fetch(Q.FINISH, command_id, payload)
                return
            except ClusterUnavailable as exc:
                log.warning("cluster_result_retry", command=command_id, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


def _field(row: Any, name: str) -> Any:
    try:
        return row[name]
    except Exception:  # noqa: BLE001 - a row without it: say nothing
        return ""


__all__ = ["CommandDispatch"]
