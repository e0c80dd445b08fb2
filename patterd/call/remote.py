"""Acting on a call whichever replica holds its media socket.

With several replicas (``store.url`` on PostgreSQL) each process runs a
:class:`~patterd.cluster.ClusterNode`: a replica claims the calls whose media socket it holds,
and a steering request (admin hang-up/transfer/DTMF, an answering-machine verdict) that lands
elsewhere is sent to the holder over LISTEN/NOTIFY and applied there once — the holder knows
the session (outcome, a DTMF-replaced Twilio stream, the voicemail spoken by our TTS). When no
live replica holds the call (one process, or the call has no media socket yet), the receiving
process acts through the carrier's REST API itself. A replica that dies leaves its calls to a
survivor, which hangs them up through the carrier so none is left billing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..carriers.rest import RestError
from ..ops.logging import get_logger
from .amd import session_for

if TYPE_CHECKING:
    from ..gateway import Gateway
    from .registry import CallRecord

log = get_logger("patterd.remote")

COMMAND_TIMEOUT = 10.0      # how long a steering request waits for the holding replica
REPLICA_LOST = "replica_lost"


async def holder(gw: "Gateway", call_id: str) -> str | None:
    """The other live replica holding ``call_id``'s media socket, if any."""
    node = gw.cluster
    if node is None or session_for(gw, call_id) is not None:
        return None
    try:
        owner = await node.owner_of(call_id, gw.carrier_name)
    except Exception as exc:  # noqa: BLE001 - the database is away: act from here
        log.warning("cluster_owner_lookup_failed", call_id=call_id, error=str(exc))
        return None
    return owner if owner and owner != node.replica_id else None


async def steer(gw: "Gateway", rec: "CallRecord", kind: str,
                args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Hang up, transfer (``to``) or send DTMF (``digits``): on the holding replica when
    another one holds the call, else here. Returns an HTTP status and a JSON body."""
    if rec.ended_at is not None:
        return 409, {"error": f"the call has ended ({rec.outcome})"}
    if await holder(gw, rec.call_id) is not None:
        assert gw.cluster is not None
        try:
            command = await gw.cluster.submit(rec.call_id, gw.carrier_name, kind, args)
            result = await gw.cluster.wait_result(command, COMMAND_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the holder vanished meanwhile: act here
            log.warning("cluster_command_failed", call_id=rec.call_id, kind=kind,
                        error=str(exc))
        else:
            if result is None:
                return 504, {"error": "the replica holding the call did not answer in time"}
            return result.get("http", 200), result.get("body", result)
    return await steer_here(gw, rec, kind, args)


async def steer_here(gw: "Gateway", rec: "CallRecord", kind: str,
                     args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The steering action from this process (through the carrier's REST API)."""
    call_id = rec.call_id
    session = session_for(gw, call_id)
    # the call's own (a browser test call's is not the carrier's)
    control = session.control if session is not None else gw.control
    detail = {k: v for k, v in args.items() if k in ("to", "digits")}
    try:
        if kind == "hangup":
            ok = await control.hangup(call_id)
        elif kind == "transfer":
            ok = await control.transfer(call_id, str(args["to"]))
        elif kind == "send_dtmf":
            params = session.parameters if session is not None else {
                "call_id": call_id, "direction": rec.direction, "from": rec.from_number,
                "to": rec.to_number}
            if session is not None and control.dtmf_ends_stream:
                session.restart_expected = True
            ok = await control.send_dtmf(call_id, str(args["digits"]), params)
        else:
            return 400, {"error": f"unknown action {kind!r}"}
    except RestError as exc:
        gw.registry.add_event(call_id, rec.carrier, kind, by="admin", ok=False,
                              error=exc.message, **detail)
        return 502, {"error": f"the carrier refused: {exc.message}"}
    gw.registry.add_event(call_id, rec.carrier, kind, by="admin", ok=ok, **detail)
    if ok and session is not None and kind in ("hangup", "transfer"):
        session.outcome = "transferred" if kind == "transfer" else "completed"
        session.ending = True
    if not ok:
        return 409, {"error": "the carrier says the call has already ended"}
    return 200, {"ok": True, "call_id": call_id, "action": kind}


async def apply_command(gw: "Gateway", call_id: str, carrier: str, kind: str,
                        args: dict[str, Any]) -> dict[str, Any]:
    """A command another replica sent for a call this one holds (ClusterNode.on_command)."""
    session = session_for(gw, call_id)
    if kind == "voicemail":
        if session is None:
            return {"ok": False, "error": "no live session here"}
        await session.leave_voicemail(str(args.get("text", "")))
        return {"ok": True}
    rec = gw.registry.ensure(call_id, carrier)
    status, body = await steer_here(gw, rec, kind, args)
    return {"ok": status == 200, "http": status, "body": body}


async def orphaned(gw: "Gateway", call_id: str, carrier: str) -> None:
    """A dead replica's call (ClusterNode.on_orphan): hang it up through the carrier and
    record why, so it is not left billing. What the dead replica wrote of the call stays in
    its part of the record (its playing line cut to what was heard, see
    :func:`~patterd.call.recovery.end_lost_call`)."""
    from .recovery import end_lost_call
    lost_at = time.time() - (gw.cluster.dead_after if gw.cluster is not None else 0.0)
    await end_lost_call(gw, call_id, carrier, outcome=REPLICA_LOST,
                        lost=lambda writer, part: bool(part.get("streaming")),
                        lost_at=lost_at, give_up=True)
    log.warning("orphan_hung_up", call_id=call_id)


async def voicemail_elsewhere(gw: "Gateway", call_id: str, text: str) -> bool:
    """Ask the replica holding the call to leave ``text`` after the beep; False when no
    other replica holds it (or it did not manage)."""
    if await holder(gw, call_id) is None:
        return False
    assert gw.cluster is not None
    try:
        command = await gw.cluster.submit(call_id, gw.carrier_name, "voicemail", {"text": text})
        result = await gw.cluster.wait_result(command, COMMAND_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - the carrier speaks it instead
        log.warning("cluster_command_failed", call_id=call_id, kind="voicemail", error=str(exc))
        return False
    return bool(result and result.get("ok"))


__all__ = ["apply_command", "holder", "orphaned", "steer", "steer_here",
           "voicemail_elsewhere"]
