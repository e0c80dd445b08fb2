"""Placing a call: the request (from the admin API or ``patterd call``) and its checks."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

from ..backends.llm.rules import fill
from ..config.backends import E164

MAX_VOICEMAIL_CHARS = 1000
MAX_VARIABLES = 20
MAX_VARIABLE_CHARS = 200
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
RING_TIMEOUT = 30  # seconds the callee's phone rings before the call counts as no-answer


@dataclass(frozen=True, slots=True)
class OutboundCall:
    """A call to place. ``stream_ref`` names this dial in its media-stream token until the
    carrier has named the call (see :mod:`patterd.call.stream_gate`)."""

    to: str
    machine_detection: bool = False
    voicemail_message: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    stream_ref: str = field(default_factory=lambda: uuid.uuid4().hex)


def parse_outbound(doc: Any, *, default_amd: bool, default_voicemail: str,
                   agent_variables: Mapping[str, str] | None = None) -> OutboundCall:
    """Validate the JSON body of ``POST /v1/calls``; raises ``ValueError`` naming the field.

    The voicemail text comes back with its ``{name}`` placeholders filled (``variables``
    over ``agent_variables``): the carrier may speak it without this daemon (Twilio's
    ``<Say>``, Telnyx ``speak``) and only gets the text."""
    if not isinstance(doc, dict):
        raise ValueError("body: expected a JSON object")
    unknown = set(doc) - {"to", "machine_detection", "voicemail_message", "variables"}
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
    return OutboundCall(to, amd, fill(vm, {**(agent_variables or {}), **clean}), clean)


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
