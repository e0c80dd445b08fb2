"""Placing a call: the request (from the admin API or ``patterd call``) and its checks."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..backends.llm.rules import fill
from ..carriers.ids import valid_call_id
from ..carriers.rest import RestError, is_loopback
from ..config.backends import E164
from ..config.masking import mask_url
from ..ops.logging import get_logger

if TYPE_CHECKING:
    from ..gateway import Gateway

log = get_logger("patterd.outbound")

MAX_VOICEMAIL_CHARS = 1000
MAX_VARIABLES = 20
MAX_VARIABLE_CHARS = 200
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
RING_TIMEOUT = 30  # seconds the callee's phone rings before the call counts as no-answer
MIN_RING, MAX_RING = 5, 600   # what both carriers accept (Twilio Timeout, Telnyx timeout_secs)


@dataclass(frozen=True, slots=True)
class OutboundCall:
    """A call to place. ``stream_ref`` names this dial in its media-stream token until the
    carrier has named the call (see :mod:`patterd.call.stream_gate`)."""

    to: str
    machine_detection: bool = False
    voicemail_message: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    ring_timeout: int = RING_TIMEOUT
    stream_ref: str = field(default_factory=lambda: uuid.uuid4().hex)


def parse_outbound(doc: Any, *, default_amd: bool, default_voicemail: str,
                   agent_variables: Mapping[str, str] | None = None) -> OutboundCall:
    """Validate the JSON body of ``POST /v1/calls``; raises ``ValueError`` naming the field.

    The voicemail text comes back with its ``{name}`` placeholders filled (``variables``
    over ``agent_variables``): the carrier may speak it without this daemon (Twilio's
    ``<Say>``, Telnyx ``speak``) and only gets the text."""
    if not isinstance(doc, dict):
        raise ValueError("body: expected a JSON object")
    unknown = set(doc) - {"to", "machine_detection", "voicemail_message", "variables",
                          "ring_timeout"}
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown field")
    to = doc.get("to")
    if not isinstance(to, str) or not E164.fullmatch(to):
        raise ValueError("to: expected an E.164 number like +15550001234")
    amd = doc.get("machine_detection", default_amd)
    if not isinstance(amd, bool):
        raise ValueError("machine_detection: expected true or false")
    vm = doc.get("voicemail_message", default_voicemail)
    if vm is None:
        vm = default_voicemail
    if not isinstance(vm, str) or len(vm) > MAX_VOICEMAIL_CHARS:
        raise ValueError(f"voicemail_message: expected text of at most {MAX_VOICEMAIL_CHARS} "
                         "characters")
    ring = doc.get("ring_timeout")
    if ring is None:
        ring = RING_TIMEOUT
    if isinstance(ring, bool) or not isinstance(ring, int) \
            or not MIN_RING <= ring <= MAX_RING:
        raise ValueError(f"ring_timeout: expected whole seconds from {MIN_RING} to {MAX_RING}")
    variables = doc.get("variables") or {}
    if not isinstance(variables, dict) or len(variables) > MAX_VARIABLES:
        raise ValueError(f"variables: expected an object of at most {MAX_VARIABLES} entries")
    clean: dict[str, str] = {}
    for name, value in variables.items():
        if not isinstance(name, str) or not _VAR_NAME.fullmatch(name):
            raise ValueError(f"variables: {str(name)[:40]!r} is not a valid name")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) \
                or len(str(value)) > MAX_VARIABLE_CHARS:
            raise ValueError(f"variables.{name}: expected text of at most "
                             f"{MAX_VARIABLE_CHARS} characters")
        clean[name] = str(value)
    return OutboundCall(to, amd, fill(vm, {**(agent_variables or {}), **clean}), clean, ring)


def stream_parameters(call: OutboundCall, from_number: str) -> dict[str, str]:
    """The context an outbound call's media stream carries (signed by the carrier)."""
    params = {"direction": "outbound", "from": from_number, "to": call.to}
    if call.machine_detection:
        params["amd"] = "1"
    if call.voicemail_message:
        params["vm"] = call.voicemail_message
    for name, value in call.variables.items():
        params[f"var_{name}"] = value
    return params


class CallError(RuntimeError):
    """A call that could not be placed: the carrier refused it or could not be reached."""


def dial_failure(exc: RestError, api_base_url: str) -> str:
    """Why the carrier did not take a call, for whoever asked (the admin API, ``phone.call``):
    a local stand-in for the carrier that is not running says what that address is for."""
    if exc.status != 0:
        return f"the carrier refused the call: {exc.message}"
    text = f"could not reach the carrier API at {mask_url(api_base_url)}: {exc.message}"
    if exc.unreachable and is_loopback(api_base_url):
        text += ("; nothing listens there. With the offline config that address is the "
                 "simulator's stand-in for the carrier, which runs only during a simulation: "
                 "place a simulated outbound call with `patterd simulate --config PATH "
                 "--outbound +15557654321`")
    return text


async def place_call(gw: Gateway, call: OutboundCall) -> str:
    """Dial ``call`` through the carrier and open its record; returns the call id. Raises
    :class:`CallError` (its message from :func:`dial_failure`) when the carrier did not take it."""
    try:
        call_id = await gw.control.dial(call)
    except RestError as exc:
        log.warning("dial_failed", to=call.to, status=exc.status, reason=exc.message)
        raise CallError(dial_failure(exc, gw.config.carrier.api_base_url)) from exc
    if not valid_call_id(gw.carrier_name, call_id):
        log.error("dial_answer_malformed", call_id=call_id[:80])
        raise CallError("the carrier answered without a valid call id")
    gw.dials.bind(call.stream_ref, call_id)   # the stream's token names this dial
    rec = gw.registry.ensure(call_id, gw.carrier_name, direction="outbound",
                             from_number=gw.config.phone_number, to_number=call.to)
    gw.registry.apply_status(call_id, gw.carrier_name, "queued")
    # stream_ref: a replica (or this process after a restart) that gets the stream finds
    # here which call the dial's token may carry.
    gw.registry.add_event(call_id, gw.carrier_name, "dial",
                          machine_detection=call.machine_detection,
                          voicemail=bool(call.voicemail_message), stream_ref=call.stream_ref)
    log.info("call_placed", call_id=call_id, to=call.to, amd=call.machine_detection)
    return rec.call_id
