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
from . import queries as Q
from .errors import ClusterUnavailable

log = get_logger("patterd.cluster")


class CommandDispatch:
    """Receiving and applying the commands aimed at this replica."""

    replica_id: str
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
        head, _, tail = payload.rpartition(":")
        if not tail.isdigit():
            return
        if head == self.replica_id:
            self._want((int(tail),))
        elif head == f"{self.replica_id}:done":
            fut = self._waiters.get(int(tail))
            if fut is not None and not fut.done():
                fut.set_result(None)   # a wake-up: wait_result reads the row itself

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
                log.warning("cluster_claim_failed", error=str(exc), retry_in=backoff)
                self._wanted.update(ids)
                self._poll_all = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            for row in sorted(claimed, key=lambda r: r["id"]):
                self._start_command(row)

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


__all__ = ["CommandDispatch"]
