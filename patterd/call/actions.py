"""Carrying out what the agent decided: transfer, hang-up, DTMF."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..backends.llm.base import END_CALL, SEND_DTMF, TRANSFER_CALL, ToolCall
from ..carriers.base import CallControl
from ..carriers.rest import RestError
from ..config.backends import DTMF_SEND, is_dial_target
from ..ops.logging import get_logger

log = get_logger("patterd.actions")


class ActionError(ValueError):
    """A tool call the gateway refuses (unknown target, bad digits)."""


def resolve_target(target: str, targets: Mapping[str, str]) -> str:
    """A transfer target by name (``agent.transfer_targets``) or as an E.164/SIP URI."""
    if target in targets:
        return targets[target]
    if is_dial_target(target):
        return target
    raise ActionError(f"transfer target {target!r} is neither a name in "
                      "agent.transfer_targets nor an E.164 number or sip: URI")


async def perform(call: ToolCall, control: CallControl, call_id: str,
                  targets: Mapping[str, str], parameters: dict[str, str]
                  ) -> dict[str, Any]:
    """Run one tool call; returns the event to record (``{"type": …, "ok": bool, …}``)."""
    args = call.arguments
    try:
        if call.name == TRANSFER_CALL:
            to = resolve_target(str(args.get("target", "")), targets)
            ok = await control.transfer(call_id, to)
            return {"type": "transfer", "to": to, "ok": ok}
        if call.name == END_CALL:
            ok = await control.hangup(call_id)
            return {"type": "hangup", "by": "agent", "ok": ok}
        if call.name == SEND_DTMF:
            digits = str(args.get("digits", ""))
            if not DTMF_SEND.fullmatch(digits):
                raise ActionError(f"digits {digits!r} are not 1-32 of 0-9 * # A-D w W")
            ok = await control.send_dtmf(call_id, digits, parameters)
            return {"type": "send_dtmf", "digits": digits, "ok": ok}
        raise ActionError(f"unknown tool {call.name!r}")
    except ActionError as exc:
        log.warning("action_refused", call_id=call_id, tool=call.name, reason=str(exc))
        return {"type": call.name, "ok": False, "error": str(exc)}
    except RestError as exc:
        log.warning("action_failed", call_id=call_id, tool=call.name, status=exc.status,
                    code=exc.code, reason=exc.message)
        return {"type": call.name, "ok": False, "error": str(exc)}
