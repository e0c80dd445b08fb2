"""Answering-machine verdicts, whichever replica receives them.

A human: the agent carries on. A machine (once its greeting ended): the voicemail message is
left and the call hung up — spoken by our TTS when this process (or, through the cluster, the
replica) holding the media stream can, else by the carrier (Twilio ``<Say>``, Telnyx
``speak``), so the verdict may land on any replica. Its ``{name}`` placeholders are filled
like every agent message: by the session from the call's variables, or here from
``agent.variables`` and whatever per-call variables the carrier's callback carried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..backends.llm.rules import fill
from ..carriers.rest import RestError
from ..ops.logging import get_logger

if TYPE_CHECKING:
    from ..gateway import Gateway

log = get_logger("patterd.amd")

HUMAN = "human"
MACHINE = "machine"
FAX = "fax"
UNKNOWN = "unknown"

# Carrier verdicts → ours. None: wait for a later event (a machine whose greeting goes on).
VERDICTS: dict[str, str | None] = {
    # Twilio (DetectMessageEnd)
    "human": HUMAN, "machine_end_beep": MACHINE, "machine_end_silence": MACHINE,
    "machine_end_other": MACHINE, "machine_start": MACHINE, "fax": FAX, "unknown": UNKNOWN,
    # Telnyx standard / premium
    "machine": None, "not_sure": UNKNOWN, "human_residence": HUMAN, "human_business": HUMAN,
    "silence": UNKNOWN, "fax_detected": FAX,
    # Telnyx greeting ended
    "beep_detected": MACHINE, "ended": MACHINE, "no_beep_detected": MACHINE,
}


def session_for(gw: Gateway, call_id: str) -> Any:
    """This process's live media session of ``call_id``, if any."""
    for session in gw.sessions:
        if session.call_id == call_id:
            return session
    return None


async def on_verdict(gw: Gateway, carrier: str, call_id: str, raw: str, voicemail: str,
                     variables: Mapping[str, str] | None = None) -> None:
    """Act on a carrier's AMD result (already recorded as an event). ``voicemail`` is the
    text as configured or requested; ``variables``: the call's own, when the callback knows
    them (the session knows them anyway)."""
    verdict = VERDICTS.get(raw, UNKNOWN)
    if verdict is None:
        return  # a machine: the greeting-ended event decides when to speak
    rec = gw.registry.ensure(call_id, carrier)
    if any(e.get("type") == "amd_verdict" for e in rec.events):
        return  # a second verdict for the same call (e.g. premium detection + greeting)
    gw.registry.add_event(call_id, carrier, "amd_verdict", verdict=verdict, raw=raw)
    log.info("amd_verdict", call_id=call_id, verdict=verdict, raw=raw)
    if verdict in (HUMAN, UNKNOWN):
        return
    session = session_for(gw, call_id)
    control = gw.control
    if verdict == MACHINE and voicemail and session is not None:
        await session.leave_voicemail(voicemail)
        return
    if verdict == MACHINE and voicemail:
        from .remote import voicemail_elsewhere
        if await voicemail_elsewhere(gw, call_id, voicemail):
            return      # the replica holding the media stream spoke it
    # A carrier report of the hang-up may beat the REST answer: it keeps this outcome.
    gw.expect_outcome(call_id, carrier, "voicemail")
    try:
        if verdict == MACHINE and voicemail:
            values = {**gw.config.agent.variables, **(variables or {})}
            await control.say_and_hangup(call_id, fill(voicemail, values))
        else:
            await control.hangup(call_id)
    except RestError as exc:
        gw.expect_outcome(call_id, carrier, "")
        log.warning("amd_action_failed", call_id=call_id, status=exc.status, reason=exc.message)
        return
    if session is not None:
        session.outcome, session.ending = "voicemail", True
    else:
        gw.finish_call(call_id, carrier, "voicemail")
