"""Calls whose process died: hung up through the carrier and recorded, the transcript kept.

**One host (SQLite).** Every process writing the store registers in its ``processes`` table
(host, pid, the process's start — so a reused pid is not taken for the dead process — and a
heartbeat every second), and each snapshot of a live call it writes says whether it holds the
call's media stream (``streaming``). At start-up and every ``RECOVERY_EVERY`` seconds a process
looks for calls whose record is not ended and whose stream was held by a process that no longer
runs. It claims that process (one recoverer only), then for each of its calls: the lines that
were still playing are cut to what was heard by the dead process's last heartbeat and marked
``interrupted`` (in the dead process's own part, which keeps everything it wrote), the call is
hung up through the carrier's REST API ("already ended" is fine) and the record ends with
outcome ``process_lost``, a ``hangup`` event (``by: gateway``, ``reason: process_lost``) and a
cost from the usage the dead process had written. A hang-up the carrier refuses is retried on
the next pass. Calls of a process that still runs are never touched.

**Replicas (PostgreSQL).** The cluster's reaper hands a dead replica's calls to a survivor,
which ends each through :func:`end_lost_call` (``replica_lost``): the same, the dead replica's
transcript kept in its part.

**Why not let the call continue?** Its media stream does not come back. Twilio's
``<Connect><Stream>`` ends when the socket closes and the call goes on with the next TwiML verb
(there is none: it ends); Telnyx stops streaming and keeps the call up, billed, without ever
re-opening the stream. Re-attaching one would take a REST request per call and a conversation
whose state (the model's history, a reply half played, a pending tool call) died with the
process; a clean hang-up with a complete record is the better end.

A Telnyx ``streaming.stopped`` for a call no stream of this process holds, whose record is not
ended after ``STOP_GRACE`` seconds and that no live process holds, is hung up the same way
(:func:`stream_stopped_elsewhere`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..ops.cost import Usage
from ..ops.logging import get_logger
from ..store.processes import from_writer_name, running
from .registry import TERMINAL, CallRecord
from .transcript import settle_lost

if TYPE_CHECKING:
    from ..gateway import Gateway

log = get_logger("patterd.recovery")

PROCESS_LOST = "process_lost"
RECOVERY_EVERY = 30.0        # seconds between passes (and one at start-up)
BEAT_EVERY = 1.0             # seconds between heartbeats (bounds the cut of a playing line)
HANGUP_RETRIES = (0.0, 1.0, 3.0)
PARALLEL = 8                 # calls of a dead process ended at once
STOP_GRACE = 5.0             # a stopped stream's call has this long to be reported ended

Lost = Callable[[str, dict[str, Any]], bool]


class Liveness:
    """Whether the writers of the store still run, asked once per writer and pass."""

    def __init__(self, me: str, processes: list[dict[str, Any]]) -> None:
        self.me = me
        self.rows = {p["writer"]: p for p in processes}
        self._known: dict[str, bool | None] = {}

    def alive(self, writer: str) -> bool | None:
        """True/False, or None when it cannot be told (another host, a name of another
        shape): such a writer is never treated as dead."""
        if writer == self.me:
            return True
        if writer not in self._known:
            row = self.rows.get(writer)
            if row is not None:
                state = running(row["host"], int(row["pid"]), row["start_id"])
            else:
                named = from_writer_name(writer)
                state = None if named is None else running(named[0], named[1], "")
            self._known[writer] = state
        return self._known[writer]

    def dead(self, writer: str) -> bool:
        """Known to be gone."""
        return self.alive(writer) is False


async def run_recovery(gw: Gateway) -> None:
    """This process's heartbeat and its recovery passes (SQLite stores only); runs until
    cancelled, a failing pass is reported and the next one comes."""
    store = gw.store_writer.store
    if not getattr(store, "tracks_processes", False):
        return
    next_pass = 0.0
    while True:
        if time.monotonic() >= next_pass:
            next_pass = time.monotonic() + RECOVERY_EVERY
            try:
                await recover_once(gw)
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                gw.supervisor.report("recovery", exc)
        with contextlib.suppress(Exception):   # the store away: the writer says so
            await store.beat()
        await asyncio.sleep(BEAT_EVERY)


async def recover_once(gw: Gateway) -> int:
    """One pass: end the calls held by processes that no longer run. Returns how many."""
    store = gw.store_writer.store
    live = Liveness(store.writer, await store.processes())
    calls: dict[str, list[tuple[str, float, dict[str, Any]]]] = {}
    for call_id, writer, written, data in await store.unended_parts():
        calls.setdefault(call_id, []).append((writer, written, data))
    lost_by: dict[str, list[tuple[str, str]]] = {}
    held_by: dict[str, set[str]] = {}      # a dead writer → the calls it held
    for call_id, parts in calls.items():
        holders = [(written, writer) for writer, written, data in parts if data.get("streaming")]
        if not holders or not all(live.dead(w) for _, w in holders):
            continue    # held by a live process (or by none: its stream never opened)
        held_by.setdefault(max(holders)[1], set()).add(call_id)
        carrier = str(next((d.get("carrier") for _, _, d in parts if d.get("carrier")), ""))
        if carrier and carrier != gw.carrier_name:
            continue    # a process serving the other carrier (sharing the file) ends it
        lost_by.setdefault(max(holders)[1], []).append((call_id, carrier))
    ended = 0
    for writer, lost in lost_by.items():
        row = live.rows.get(writer)
        if row is not None:
            claimant = row.get("reaped_by")
            if claimant and live.alive(claimant) is not False and claimant != store.writer:
                continue                       # a live process is on it already
            if not await store.claim_process(writer, claimant):
                continue
        lost_at = float(row["beat_at"]) if row is not None else max(
            written for lost_id, _ in lost for w, written, _d in calls[lost_id] if w == writer)
        log.warning("process_lost", writer=writer, calls=len(lost),
                    seconds_since_heartbeat=round(time.time() - lost_at, 3))
        gate = asyncio.Semaphore(PARALLEL)

        async def end_one(call_id: str, carrier: str) -> bool:
            async with gate:
                return await end_lost_call(gw, call_id, carrier, outcome=PROCESS_LOST,
                                           lost=lambda w, d: live.dead(w), lost_at=lost_at,
                                           give_up=False)

        done = await asyncio.gather(*(end_one(c, k) for c, k in lost), return_exceptions=True)
        ok = [d is True for d in done]
        for (call_id, _), result in zip(lost, done):
            if isinstance(result, BaseException):
                gw.supervisor.report("recovery", result, call_id=call_id)
        ended += sum(ok)
        if all(ok) and len(lost) == len(held_by[writer]):   # (none of another carrier)
            await gw.store_writer.flush(5.0)   # the ends are stored before the holder goes
            await store.forget_process(writer)
    holding = {w for parts in calls.values() for w, _, d in parts if d.get("streaming")}
    for writer in live.rows:      # dead processes that hold nothing: forgotten
        if writer not in holding and writer not in lost_by and live.dead(writer):
            await store.forget_process(writer)
    return ended


async def end_lost_call(gw: Gateway, call_id: str, carrier: str, *, outcome: str,
                        lost: Lost, lost_at: float | None, give_up: bool,
                        reason: str = "") -> bool:
    """End a call whose stream's process died: its lost writers' (``lost(writer, part)``)
    playing lines cut to what was heard by ``lost_at`` (wall clock), the call hung up through
    the carrier, the record ended with ``outcome`` (event reason ``reason`` or the outcome).
    When the carrier refuses the hang-up: with ``give_up`` it is recorded as failed
    (``ok: false``), else nothing is recorded and False returned (the next pass retries)."""
    from .amd import session_for
    if session_for(gw, call_id) is not None:
        return True                     # its stream is here now: not lost
    store = gw.store_writer.store if gw.store_writer is not None else None
    parts: list[tuple[str, dict[str, Any]]] = []
    if store is not None:
        try:
            parts = await store.call_parts(call_id)
        except Exception as exc:  # noqa: BLE001 - hang up anyway; the lines wait
            log.warning("lost_call_parts_unreadable", call_id=call_id, error=str(exc))
    dead = [(w, d) for w, d in parts if w != getattr(store, "writer", None) and lost(w, d)]
    streaming = {w for w, d in dead if d.get("streaming")}
    rec = _adopt(gw, call_id, carrier, dead, outcome)
    ended, error = await _hang_up(gw, call_id, carrier)
    if error and not give_up:
        rec.expected = ""
        log.error("lost_call_hangup_failed", call_id=call_id, error=error,
                  detail="retried on the next pass")
        return False      # the lost parts unchanged: the next pass finds the call again
    _record(gw, rec, outcome, reason or outcome, dead, streaming, ended, error)
    for writer, data in dead:
        changed = [settle_lost(line, lost_at) for line in data.get("transcript") or []]
        if (any(changed) or data.pop("streaming", None)) and store is not None:
            try:   # in the lost writer's own part: nothing it wrote is lost or doubled
                await store.upsert_calls([data], writer=writer)
            except Exception as exc:  # noqa: BLE001 - the lines stay as they were
                log.warning("lost_call_lines_unsettled", call_id=call_id, error=str(exc))
    return True


async def _hang_up(gw: Gateway, call_id: str, carrier: str) -> tuple[bool | None, str]:
    """``(True: hung up / False: it had ended already, "")`` or ``(None, why not)``."""
    if gw.control is None or (carrier and carrier != gw.carrier_name):
        return None, f"this process does not serve {carrier or 'its'} calls"
    error = ""
    for delay in HANGUP_RETRIES:
        await asyncio.sleep(delay)
        try:
            return bool(await gw.control.hangup(call_id)), ""
        except Exception as exc:  # noqa: BLE001 - counted by the REST client; try again
            error = str(exc) or type(exc).__name__
    return None, error


def _adopt(gw: Gateway, call_id: str, carrier: str, dead: list[tuple[str, dict[str, Any]]],
           outcome: str) -> CallRecord:
    """This process's record of the lost call, before the hang-up: who it was, the state the
    lost writer last saw, and the outcome a carrier's report of the hang-up keeps if it beats
    the REST answer."""
    first = dead[0][1] if dead else {}
    fresh = gw.registry.get(call_id) is None
    rec = gw.registry.ensure(call_id, carrier or str(first.get("carrier") or ""),
                             direction=first.get("direction"), from_number=first.get("from"),
                             to_number=first.get("to"))
    if fresh and dead and rec.ended_at is None:
        rec.status = str(dead[-1][1].get("status") or rec.status)
    rec.adopted = True
    rec.expected = outcome
    gw.registry.touch(rec)
    return rec


def _record(gw: Gateway, rec: CallRecord, outcome: str, reason: str,
            dead: list[tuple[str, dict[str, Any]]], streaming: set[str], ended: bool | None,
            error: str) -> None:
    """The hang-up, the end and the cost of the lost call in this process's part."""
    detail: dict[str, Any] = {"ok": ended is not None}
    if error:
        detail["error"] = error
    gw.registry.add_event(rec.call_id, rec.carrier, "hangup", by="gateway", reason=reason,
                          **detail)
    if rec.cost is None:        # (the carrier's report of the hang-up may have ended it)
        now = time.time()
        for writer, data in dead:   # what the lost writers had metered, billed until now
            meter = data.get("meter")
            if not isinstance(meter, dict):
                continue
            try:
                rec.usage.add(Usage(**meter.get("usage", {})))
                seconds = float(meter.get("media_seconds") or 0.0)
                if writer in streaming:    # its stream was up until the hang-up
                    seconds += max(0.0, now - float(meter.get("at") or now))
                rec.media_seconds += seconds
            except (TypeError, ValueError):
                log.warning("lost_call_meter_unreadable", call_id=rec.call_id)
    if rec.status not in TERMINAL and ended is not None:
        # The carrier says it is over (now or already): its status, and why in the history —
        # in the same write that ends the record (no await from here on).
        gw.registry.apply_status(rec.call_id, rec.carrier, "completed", via="hangup")
    gw.price_call(rec)
    if not gw.finish_call(rec.call_id, rec.carrier, outcome):
        # The carrier's report of the end reached this process first (the dead process's
        # socket closing ends a Twilio call) and ended it as a plain "completed", uncounted
        # (another process held the stream): the cause is ours to say, and to count.
        gw.registry.refine_outcome(rec.call_id, outcome)
        gw.count_call(rec)
    log.warning("lost_call_ended", call_id=rec.call_id, outcome=rec.outcome, hung_up=ended)


async def stream_stopped_elsewhere(gw: Gateway, call_id: str, carrier: str,
                                   known: bool) -> None:
    """A carrier says the call's media stream stopped, and no stream of this process held
    it. Unless within ``STOP_GRACE`` seconds its record ends (the carrier's hang-up report, a
    recovery) or a stream of it opens here, it is hung up — when some process's record of it
    exists (``known``: this process had one before the event) and no live process holds it:
    ``process_lost`` when a dead process held its stream, else ``failed``."""
    store = gw.store_writer.store if gw.store_writer is not None else None
    me = getattr(store, "writer", "")
    if not known and not [w for w, _ in await _parts(store, call_id) if w != me]:
        return          # a call no process of ours ever knew of
    await asyncio.sleep(STOP_GRACE)
    if gw.registry.held(call_id):
        return
    rec = gw.registry.get(call_id)
    if rec is not None and rec.ended_at is not None:
        return
    parts = await _parts(store, call_id)
    if any(d.get("ended_at") is not None for _, d in parts):
        return          # some process recorded its end
    others = [(w, d) for w, d in parts if w != me]
    live = Liveness(me, await _processes(store))
    holders = [w for w, d in others if d.get("streaming")]
    if gw.cluster is not None:
        from .remote import holder
        if await holder(gw, call_id) is not None:
            return
    elif any(not live.dead(w) for w in holders):
        return          # a live process holds it
    outcome = PROCESS_LOST if holders else "failed"
    lost_at = max((float(live.rows[w]["beat_at"]) for w in holders if w in live.rows),
                  default=None)
    log.warning("stream_stopped_call_up", call_id=call_id, detail="hanging up",
                outcome=outcome)
    await end_lost_call(gw, call_id, carrier, outcome=outcome,
                        lost=lambda w, d: bool(d.get("streaming")), lost_at=lost_at,
                        give_up=True, reason=PROCESS_LOST if holders else "stream_stopped")


async def end_if_still_up(gw: Any, control: Any, call_id: str, carrier: str) -> None:
    """Hang the call up through the carrier unless the carrier reports its end (a terminal
    status in the record) within ``STOP_GRACE`` seconds of the stream stopping."""
    await asyncio.sleep(STOP_GRACE)
    rec = gw.registry.get(call_id)
    if (rec is not None and rec.status in TERMINAL) or gw.registry.evicted(call_id) is not None:
        return    # (an evicted call is over, and stored)
    if gw.cluster is not None and gw.store_writer is not None:
        try:   # the carrier's report may have reached another replica
            stored = await gw.store_writer.store.get_call(call_id)
        except Exception:  # noqa: BLE001 - the store is away: hang up to be safe
            stored = None
        if stored is not None and stored.get("status") in TERMINAL:
            return
    log.warning("stream_stopped_call_up", call_id=call_id, detail="hanging up")
    try:
        ended = await control.hangup(call_id)
    except Exception as exc:  # noqa: BLE001 - logged; the record says what happened
        log.warning("hangup_after_stop_failed", call_id=call_id, error=repr(exc))
        return
    gw.registry.add_event(call_id, carrier, "hangup", by="gateway", reason="stream_stopped",
                          ok=bool(ended))


async def _parts(store: Any, call_id: str) -> list[tuple[str, dict[str, Any]]]:
    if store is None:
        return []
    try:
        return list(await store.call_parts(call_id))
    except Exception:  # noqa: BLE001 - the store away: decide from what is here
        return []


async def _processes(store: Any) -> list[dict[str, Any]]:
    if not getattr(store, "tracks_processes", False):
        return []
    try:
        return list(await store.processes())
    except Exception:  # noqa: BLE001 - unknown: nobody is taken for dead
        return []


__all__ = ["PROCESS_LOST", "end_if_still_up", "end_lost_call", "recover_once",
           "run_recovery", "stream_stopped_elsewhere"]
