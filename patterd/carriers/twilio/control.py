"""Live-call actions and outbound calls through Twilio's REST API."""

from __future__ import annotations

import base64
import json

from ...call.outbound import OutboundCall, stream_parameters
from ...config import Config, TwilioSettings
from ..rest import ErrorHook, SessionSource
from .rest import TwilioRest
from ..stream_token import HANDOFF_PARAM, HANDOFF_TTL
from .stream_token import OUTBOUND_REF, STREAM_TTL, TOKEN_PARAM, StreamTokens
from .twiml import connect_stream


def amd_context(voicemail: str) -> str:
    """Voicemail text carried in the (Twilio-signed) AMD callback URL, so that whichever
    replica receives the verdict can leave it."""
    raw = json.dumps({"vm": voicemail}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def read_amd_context(value: str) -> str:
    """The voicemail text of :func:`amd_context` (``""`` if absent or malformed)."""
    try:
        doc = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, TypeError):
        return ""
    vm = doc.get("vm") if isinstance(doc, dict) else None
    return vm if isinstance(vm, str) else ""


class TwilioControl:
    """Hang-up, transfer, DTMF, recording and dialling for Twilio calls. Any TwiML update ends
    the running stream, so DTMF re-attaches it in the same update. ``on_error`` hears of each
    failed action (but a failed recording start, which the session counts)."""

    dtmf_ends_stream = True
    stop_keeps_call_up = False
    restream_overlaps = False    # a TwiML update ends the old stream before the new one starts
    movable = True               # its calls can move to another replica

    def __init__(self, session: SessionSource, settings: TwilioSettings, config: Config,
                 stream_url: str, tokens: StreamTokens, on_error: ErrorHook | None = None
                 ) -> None:
        self._rest = TwilioRest(session, settings, on_error)
        self._tokens = tokens
        self._config = config
        self._caller_id = config.phone_number
        self._stream_url = stream_url
        self._base = config.server.public_url

    async def hangup(self, call_id: str) -> bool:
        """``Status=completed`` (20404 = already ended, also fine)."""
        return await self._rest.hangup(call_id)

    async def transfer(self, call_id: str, target: str) -> bool:
        """``<Dial>`` the target with our number as caller id."""
        return await self._rest.transfer(call_id, target, self._caller_id)

    async def send_dtmf(self, call_id: str, digits: str, parameters: dict[str, str]) -> bool:
        """``<Play digits>`` then ``<Connect><Stream>`` again, marked as a resumed stream,
        with a stream token of its own."""
        direction = parameters.get("direction") or "inbound"
        params = {**parameters, "resumed": "1",
                  TOKEN_PARAM: self._tokens.mint(call_id, direction)}
        return await self._rest.send_dtmf(call_id, digits, self._stream_url, params)

    async def restream(self, call_id: str, parameters: dict[str, str], handoff: str) -> bool:
        """Hand-off: a TwiML update with a new ``<Connect><Stream>`` to the public URL (the
        load balancer picks a ready replica), marked resumed, naming the hand-off, with a
        short-lived stream token of its own. Twilio ends the running stream at once."""
        direction = parameters.get("direction") or "inbound"
        params = {**parameters, "resumed": "1", HANDOFF_PARAM: handoff,
                  TOKEN_PARAM: self._tokens.mint(call_id, direction, HANDOFF_TTL)}
        return await self._rest.restream(call_id, self._stream_url, params)

    async def stop_stream(self, call_id: str, stream_id: str) -> bool:
        """Nothing to do: the TwiML update of :meth:`restream` ended the old stream."""
        return True

    async def start_recording(self, call_id: str, channels: str) -> str:
        """Dual-channel recording with status callbacks to ``/webhooks/twilio/recording``."""
        return await self._rest.start_recording(
            call_id, f"{self._base}/webhooks/twilio/recording", channels)

    async def say_and_hangup(self, call_id: str, text: str) -> bool:
        """Twilio speaks ``text`` and hangs up (the stream, wherever it is, ends)."""
        return await self._rest.say_and_hangup(call_id, text)

    async def dial(self, call: OutboundCall) -> str:
        """``POST /Calls.json`` with the stream inline; returns the CallSid."""
        params = stream_parameters(call, self._caller_id)
        params[TOKEN_PARAM] = self._tokens.mint(OUTBOUND_REF + call.stream_ref, "outbound",
                                                call.ring_timeout + STREAM_TTL)
        form = [("To", call.to), ("From", self._caller_id),
                ("Twiml", connect_stream(self._stream_url, params)),
                ("StatusCallback", f"{self._base}/webhooks/twilio/status"),
                ("StatusCallbackMethod", "POST")]
        form += [("StatusCallbackEvent", e)
                 for e in ("initiated", "ringing", "answered", "completed")]
        form.append(("Timeout", str(call.ring_timeout)))
        if call.machine_detection:
            amd_url = f"{self._base}/webhooks/twilio/amd"
            if call.voicemail_message:
                amd_url += f"?ctx={amd_context(call.voicemail_message)}"
            form += [("MachineDetection", "DetectMessageEnd"), ("AsyncAmd", "true"),
                     ("AsyncAmdStatusCallback", amd_url),
                     ("AsyncAmdStatusCallbackMethod", "POST")]
        resource = await self._rest.create_call(form)
        return str(resource.get("sid", ""))
