"""Hand-off on drain: a draining replica moves each live call to a ready peer.

With replicas sharing PostgreSQL (``store.url``) and ``server.handoff`` on, SIGTERM no longer
means "wait for every call to end". After ``server.handoff_delay`` seconds (the load balancer
has seen ``/readyz`` answer 503 by then), each live call is moved:

1. at a quiet moment — nobody speaking, no words being recognised, no reply being composed
   or played — waiting up to ``QUIET_WAIT`` seconds for one; after that the reply that is
   playing is cut (recorded as heard, ``interrupted``) and the sentence it was in is said
   again, whole, by the new replica, with the sentences that had not played yet;
2. the conversation (:mod:`.handoff_state`) is written to the shared store under a random id;
3. the carrier is told to point the call's media at the public URL again with a new stream
   token (signed, bound to the call, single-use, 60 s) and the hand-off id: Twilio by a TwiML
   update with a new ``<Connect><Stream>`` (the old stream ends at once: what the caller says
   in the gap, typically a few hundred milliseconds, reaches nobody), Telnyx by
   ``streaming_start`` — the old stream stays up and listening until the new one is held by
   its replica, then it is stopped (``streaming_stop`` with its id);
4. the replica that gets the stream takes the state (once: a replayed stream finds none),
   resumes without greeting, with the full history, and records a ``handoff`` event (from,
   to, gap); the old replica exits as soon as its calls are gone.

A call that cannot be moved (no ready peer, the store or the carrier refused, the new stream
never came) stays and drains as before, up to ``server.drain_timeout``. A stream that comes
for a hand-off whose state is missing ends its call cleanly through the carrier (outcome
``handoff_lost``); one for a hand-off the old replica gave up (it kept the call) is stopped.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING, Any

from ..cluster.handoffs import forget_handoff, put_handoff, take_handoff
from ..ops.logging import get_logger
from .handoff_state import capture, restore

if TYPE_CHECKING:
    from ..gateway import Gateway

log = get_logger("patterd.handoff")

QUIET_WAIT = 8.0       # seconds to wait for a quiet moment before cutting a reply
STORE_TIMEOUT = 3.0    # seconds the shared store has for writing or taking a state
STREAM_WAIT = 10.0     # Telnyx: seconds for the new stream to be held by its replica
PEER_POLL = 1.0
LOST_OUTCOME = "handoff_lost"
LOST_APOLOGY = ("Sorry, we lost track of this call on our side. Please call us again. "
                "Goodbye.")
CONCURRENT = 16        # calls being moved at once (the carrier's API is the bound)
TAKE_RETRIES = (0.0, 0.5, 1.0)   # the new replica's tries at reading a state (a store blip)


def enabled(gw: "Gateway") -> bool:
    """Whether this process hands its calls off on drain (replicas, ``server.handoff``)."""
    return gw.cluster is not None and gw.config.server.handoff


async def hand_off_all(gw: "Gateway", deadline: float) -> None:
    """The drain's mover: until ``deadline`` (loop time) or no call is left, move every live
    call once (a call that moved here while draining is moved on too)."""
    loop = asyncio.get_running_loop()
    if gw.sessions:
        await asyncio.sleep(gw.config.server.handoff_delay)
    slots = asyncio.Semaphore(CONCURRENT)

    async def move(session: Any) -> None:
        async with slots:
            try:
                await hand_off(gw, session)
            except Exception as exc:  # noqa: BLE001 - a bug here must not leave it deaf
                gw.supervisor.report("call", exc, call_id=session.call_id)
                if not session.record.handed_off:
                    _failed(gw, session, "internal", exc)

    while gw.sessions and loop.time() < deadline:
        waiting = [s for s in list(gw.sessions) if not s.handoff_tried and not s.ending
                   and s.control.movable]
        if waiting and await _peer_ready(gw):
            for session in waiting:
                session.handoff_tried = True
                gw.spawn(move(session), name="handoff")
        await asyncio.sleep(0.2 if not waiting else PEER_POLL)


async def _peer_ready(gw: "Gateway") -> bool:
    """Some other live replica is not draining."""
    node = gw.cluster
    try:
        replicas = await asyncio.wait_for(node.live_replicas(), STORE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - the store is away: nobody to hand off to
        log.warning("handoff_peers_unknown", error=str(exc) or type(exc).__name__)
        return False
    return any(r.id != node.replica_id and not r.draining for r in replicas)


async def hand_off(gw: "Gateway", session: Any) -> bool:
    """Move one call (see the module docstring); False when it stays here."""
    if not await _quiet(session):
        return False          # it ended meanwhile
    resume_text = await _cut_reply(session) if session.agent_busy else ""
    if session.ending:
        return False
    call_id, carrier, node = session.call_id, session.carrier, gw.cluster
    handoff_id = secrets.token_urlsafe(16)
    session.handing_off = True
    try:
        state = capture(session, resume_text=resume_text)
        await asyncio.wait_for(put_handoff(node, handoff_id, call_id, carrier, state),
                               STORE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - the store is away: the call stays here
        return _failed(gw, session, "store", exc)
    params = {k: v for k, v in session.parameters.items()}
    session.restart_expected = True
    try:
        moved = await session.control.restream(call_id, params, handoff_id)
    except Exception as exc:  # noqa: BLE001 - the carrier refused: the call stays here
        moved, why = False, exc
    else:
        why = RuntimeError("the carrier says the call has ended")
    if not moved:
        await _forget(node, handoff_id)
        return _failed(gw, session, "carrier", why)
    session.record.handed_off = True
    gw.registry.touch(session.record)
    gw.metrics.call_handoffs.labels("sent").inc()
    log.info("handoff_sent", call_id=call_id)
    if session.control.restream_overlaps:
        if not await _held_elsewhere(gw, session, STREAM_WAIT):
            await _forget(node, handoff_id)
            session.record.handed_off = False
            return _failed(gw, session, "stream", TimeoutError(
                f"the new stream was not up within {STREAM_WAIT:g} s"))
        try:
            await session.control.stop_stream(call_id, session.stream_id)
        except Exception as exc:  # noqa: BLE001 - the carrier will stop it with the call
            log.warning("handoff_stop_stream_failed", call_id=call_id, error=str(exc))
    return True


async def _quiet(session: Any) -> bool:
    """Wait (up to ``QUIET_WAIT``) until nobody speaks and no reply is on its way; False if
    the call ended meanwhile. True also when the wait ran out (the reply is cut then)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + QUIET_WAIT
    while loop.time() < until:
        if session.ending:
            return False
        if not (session.agent_busy or session.user_speaking or session.recognising):
            return True
        await asyncio.sleep(0.05)
    return not session.ending


async def _cut_reply(session: Any) -> str:
    """Stop the agent mid-reply; the words to say again: the sentence that was cut and the
    ones that had not played."""
    spoken = [u for line in list(session._lines) for u in line.spoken]
    await session._stop_talking()
    return " ".join(u.text for u in spoken if not u.played and u.text.strip())


async def _held_elsewhere(gw: "Gateway", session: Any, timeout: float) -> bool:
    """Wait until another replica holds the call (its new stream started there)."""
    node = gw.cluster
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while loop.time() < until and not session.ending:
        try:
            owner = await asyncio.wait_for(node.owner_of(session.call_id, session.carrier),
                                           STORE_TIMEOUT)
        except Exception:  # noqa: BLE001 - try again until the bound
            owner = None
        if owner and owner != node.replica_id:
            return True
        await asyncio.sleep(0.1)
    return False


def _failed(gw: "Gateway", session: Any, stage: str, exc: BaseException) -> bool:
    """The call stays here and drains as before; a turn that came meanwhile is answered."""
    session.restart_expected = False
    session.handing_off = False
    gw.metrics.call_handoffs.labels("failed").inc()
    gw.registry.add_event(session.call_id, session.carrier, "handoff", ok=False, stage=stage,
                          error=str(exc) or type(exc).__name__)
    log.warning("handoff_failed", call_id=session.call_id, stage=stage,
                error=str(exc) or type(exc).__name__)
    session.replay_deferred()
    return False


async def _forget(node: Any, handoff_id: str) -> None:
    try:
        await asyncio.wait_for(forget_handoff(node, handoff_id), STORE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - it expires; a late stream finds a live holder
        log.warning("handoff_forget_failed", error=str(exc) or type(exc).__name__)


# -------------------------------------------------------------------------- the new replica

async def resume(session: Any) -> None:
    """A stream that a hand-off sent here: take the call's state and carry on (the session
    defers turns until then)."""
    gw = session.gw
    call_id, carrier = session.call_id, session.carrier
    taken = None
    for pause in TAKE_RETRIES if gw.cluster is not None else ():
        await asyncio.sleep(pause)
        try:
            taken = await asyncio.wait_for(
                take_handoff(gw.cluster, session.handoff_id, call_id, carrier), STORE_TIMEOUT)
            break
        except Exception as exc:  # noqa: BLE001 - the store is away: again, then "missing"
            log.warning("handoff_take_failed", call_id=call_id,
                        error=str(exc) or type(exc).__name__)
    if taken is not None and taken[1].get("cancelled"):
        await _superfluous(session)
        return
    if taken is not None:
        from_replica, state = taken
        try:
            restore(session, state)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("handoff_state_unreadable", call_id=call_id, error=str(exc))
        else:
            _resumed(session, from_replica, state)
            return
    await _lost(session)


def _resumed(session: Any, from_replica: str, state: dict[str, Any]) -> None:
    gw = session.gw
    moved_at = state.get("moved_at")
    gap = max(0.0, time.time() - moved_at) if isinstance(moved_at, (int, float)) else 0.0
    gw.metrics.call_handoffs.labels("resumed").inc()
    gw.metrics.handoff_gap.observe(gap)
    gw.registry.add_event(session.call_id, session.carrier, "handoff", ok=True,
                          **{"from": from_replica, "to": gw.cluster.replica_id,
                             "gap": round(gap, 3)})
    log.info("handoff_resumed", call_id=session.call_id, from_replica=from_replica,
             gap_ms=round(gap * 1000))
    session.handing_off = False
    resume_text = str(state.get("resume_text") or "")
    if resume_text:
        session.say_again(resume_text)
    session.replay_deferred()


async def _superfluous(session: Any) -> None:
    """The old replica gave this hand-off up and kept the call (its new stream came too
    late): only this stream goes, the call stays with that replica."""
    session.handing_off = False
    session.restart_expected = True
    log.warning("handoff_stream_superfluous", call_id=session.call_id)
    try:
        await session.control.stop_stream(session.call_id, session.stream_id)
    except Exception as exc:  # noqa: BLE001 - the holder goes on regardless
        log.warning("handoff_stop_stream_failed", call_id=session.call_id, error=str(exc))


async def _lost(session: Any) -> None:
    """No state to resume with (never stored, taken already, expired, unreadable): the call
    cannot go on as the conversation it was, so it ends cleanly through the carrier."""
    gw = session.gw
    gw.metrics.call_handoffs.labels("lost").inc()
    session.handing_off = False
    log.warning("handoff_state_missing", call_id=session.call_id)
    gw.registry.add_event(session.call_id, session.carrier, "handoff", ok=False,
                          stage="resume", error="no state to resume the call with")
    await session.end(LOST_OUTCOME, LOST_APOLOGY)


__all__ = ["LOST_OUTCOME", "enabled", "hand_off", "hand_off_all", "resume"]
