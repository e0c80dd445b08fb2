"""Live-call actions and outbound calls through Telnyx Call Control."""

from __future__ import annotations

from typing import Any

from ...call.outbound import OutboundCall
from ...config import Config, TelnyxSettings
from ..rest import ErrorHook, RestError, SessionSource
from .rest import TelnyxRest, client_state
from ..stream_token import HANDOFF_PARAM, HANDOFF_TTL
from .stream_token import OUTBOUND_REF, STREAM_TTL, StreamTokens


class TelnyxControl:
    """Hang-up, transfer, DTMF, recording and dialling for Telnyx calls; ``on_error`` hears
    of each failed one (but a failed recording start, which the session counts)."""

    dtmf_ends_stream = False
    stop_keeps_call_up = True
    restream_overlaps = True     # the old stream is stopped once the new one is up
    movable = True               # its calls can move to another replica

    def __init__(self, session: SessionSource, settings: TelnyxSettings, config: Config,
                 tokens: StreamTokens, stream_url: Any, on_error: ErrorHook | None = None
                 ) -> None:
        self._rest = TelnyxRest(session, settings, on_error)
        self._settings = settings
        self._from = config.phone_number
        self._tokens = tokens
        self._stream_url = stream_url   # token → wss URL

    async def hangup(self, call_id: str) -> bool:
        """``actions/hangup`` (90018 = already ended, also fine)."""
        return await self._rest.hangup(call_id)

    async def transfer(self, call_id: str, target: str) -> bool:
        """``actions/transfer``."""
        return await self._rest.transfer(call_id, target, self._from)

    async def send_dtmf(self, call_id: str, digits: str, parameters: dict[str, str]) -> bool:
        """``actions/send_dtmf``."""
        return await self._rest.send_dtmf(call_id, digits)

    async def restream(self, call_id: str, parameters: dict[str, str], handoff: str) -> bool:
        """Hand-off: ``streaming_start`` to the public URL (the load balancer picks a ready
        replica) with a short-lived token of its own and the hand-off named in the URL's
        query; the running stream stays up (and listening) until :meth:`stop_stream`."""
        direction = parameters.get("direction") or "inbound"
        url = self._stream_url(self._tokens.mint(call_id, direction, HANDOFF_TTL))
        return await self._rest.streaming_start(call_id, f"{url}?{HANDOFF_PARAM}={handoff}")

    async def stop_stream(self, call_id: str, stream_id: str) -> bool:
        """``streaming_stop`` of one stream (the call stays up)."""
        return await self._rest.streaming_stop(call_id, stream_id)

    async def start_recording(self, call_id: str, channels: str) -> str:
        """``actions/record_start`` (``call.recording.saved`` comes after the call)."""
        ok = await self._rest.record_start(call_id, "single" if channels == "mono" else "dual")
        return "record_start" if ok else ""

    async def say_and_hangup(self, call_id: str, text: str) -> bool:
        """``actions/speak``; the ``call.speak.ended`` webhook then hangs up."""
        return await self._rest.speak(call_id, text, {"after_speak": "hangup"})

    async def dial(self, call: OutboundCall) -> str:
        """``POST /calls`` with the stream fields, so media starts at answer."""
        if not self._settings.connection_id:
            raise RestError(0, "config", "carrier.connection_id (or TELNYX_CONNECTION_ID) is "
                                         "needed to place Telnyx calls")
        ref = call.stream_ref
        state: dict[str, Any] = {"direction": "outbound", "ref": ref, "to": call.to,
                                 "from": self._from}
        if call.machine_detection:
            state["amd"] = "1"
        if call.voicemail_message:
            state["vm"] = call.voicemail_message
        if call.variables:
            state["vars"] = call.variables
        body: dict[str, Any] = {
            "connection_id": self._settings.connection_id, "to": call.to, "from": self._from,
            "timeout_secs": call.ring_timeout,
            "stream_url": self._stream_url(self._tokens.mint(
                OUTBOUND_REF + ref, "outbound", call.ring_timeout + STREAM_TTL)),
            "stream_track": "inbound_track", "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": "PCMU", "stream_bidirectional_target_legs": "self",
            "client_state": client_state(state),
        }
        if call.machine_detection:
            body["answering_machine_detection"] = "greeting_end"
        data = await self._rest.dial(body)
        return str(data.get("call_control_id", ""))
