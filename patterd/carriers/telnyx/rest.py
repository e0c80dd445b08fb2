"""Telnyx Call Control REST: JSON commands under ``/calls/{call_control_id}/actions``."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp

from ...config import TelnyxSettings
from ..rest import ErrorHook, RestClient, RestError, RestResponse, SessionSource, reported

ALREADY_ENDED = "90018"


def client_state(data: dict[str, Any]) -> str:
    """Telnyx requires ``client_state`` to be base64."""
    return base64.b64encode(json.dumps(data, separators=(",", ":")).encode()).decode("ascii")


def read_client_state(value: Any) -> dict[str, Any]:
    """Decode a ``client_state`` we set earlier; anything else gives ``{}``."""
    if not isinstance(value, str) or not value:
        return {}
    try:
        data = json.loads(base64.b64decode(value, validate=True))
    except (ValueError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


class TelnyxRest:
    """Bearer-authenticated JSON requests; every command carries a fresh ``command_id`` so a
    retried request is applied once. ``on_error`` hears of every action that failed
    (``patterd_backend_errors_total``); "call already ended" (90018) is not a failure."""

    def __init__(self, session: SessionSource, settings: TelnyxSettings,
                 on_error: ErrorHook | None = None) -> None:
        self._client = RestClient(session, settings.api_base_url,
                                  headers={"Authorization": f"Bearer {settings.api_key}"},
                                  on_error=on_error)

    async def command(self, call_control_id: str, action: str, body: dict[str, Any]
                      ) -> RestResponse:
        """``POST /calls/{id}/actions/{action}``."""
        payload = {**body, "command_id": body.get("command_id") or str(uuid.uuid4())}
        return await self._client.request(
            "POST", f"/calls/{quote(call_control_id, safe='')}/actions/{action}",
            json_body=payload)

    @reported
    async def answer(self, call_control_id: str, stream_url: str, state: dict[str, Any]
                     ) -> RestResponse:
        """Answer with a bidirectional PCMU media stream in ``rtp`` mode (the default ``mp3``
        mode drops raw audio). A call the caller already hung up (90018) is returned, not
        raised: ``call.hangup`` tells its outcome."""
        resp = await self.command(call_control_id, "answer", {
            "stream_url": stream_url,
            "stream_track": "inbound_track",
            "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": "PCMU",
            "stream_bidirectional_target_legs": "self",
            "client_state": client_state(state),
        })
        if error_code(resp) != ALREADY_ENDED:
            _raise_for(resp, "answer")
        return resp

    @reported
    async def reject(self, call_control_id: str, cause: str = "USER_BUSY") -> RestResponse:
        """Decline a ringing call."""
        resp = await self.command(call_control_id, "reject", {"cause": cause})
        if not (resp.ok or error_code(resp) == ALREADY_ENDED):
            _raise_for(resp, "reject")
        return resp

    @reported
    async def hangup(self, call_control_id: str) -> bool:
        """End a call; True also when Telnyx says it had already ended (90018)."""
        resp = await self.command(call_control_id, "hangup", {})
        if resp.ok or error_code(resp) == ALREADY_ENDED:
            return True
        _raise_for(resp, "hang up")
        return False

    @reported
    async def dial(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /calls``; the call (``call_control_id``…) or :class:`RestError`."""
        payload = {**body, "command_id": body.get("command_id") or str(uuid.uuid4())}
        resp = await self._client.request("POST", "/calls", json_body=payload)
        _raise_for(resp, "place the call")
        data = resp.body.get("data") if isinstance(resp.body, dict) else None
        return data if isinstance(data, dict) else {}

    async def record_start(self, call_control_id: str, channels: str) -> bool:
        """Record the call (``call.recording.saved`` follows the hang-up). Not reported to
        ``on_error``: the call session counts a failed recording start itself."""
        return await self._checked(call_control_id, "record_start",
                                   {"format": "wav", "channels": channels})

    @reported
    async def speak(self, call_control_id: str, text: str, state: dict[str, Any]) -> bool:
        """Have Telnyx speak ``text`` (``call.speak.ended`` follows, carrying ``state``)."""
        return await self._checked(call_control_id, "speak", {
            "payload": text[:3000], "voice": "AWS.Polly.Joanna-Neural", "language": "en-US",
            "payload_type": "text", "client_state": client_state(state)})

    @reported
    async def transfer(self, call_control_id: str, to: str, from_number: str = "") -> bool:
        """Transfer the call to ``to`` (E.164 or ``sip:``)."""
        body: dict[str, Any] = {"to": to}
        if from_number:
            body["from"] = from_number
        return await self._checked(call_control_id, "transfer", body)

    @reported
    async def streaming_start(self, call_control_id: str, stream_url: str) -> bool:
        """Open another bidirectional PCMU media stream (``rtp`` mode) to ``stream_url``;
        the running one stays up until stopped."""
        return await self._checked(call_control_id, "streaming_start", {
            "stream_url": stream_url,
            "stream_track": "inbound_track",
            "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": "PCMU",
            "stream_bidirectional_target_legs": "self",
        })

    @reported
    async def streaming_stop(self, call_control_id: str, stream_id: str) -> bool:
        """Stop one media stream of the call (the call stays up)."""
        return await self._checked(call_control_id, "streaming_stop", {"stream_id": stream_id})

    @reported
    async def send_dtmf(self, call_control_id: str, digits: str) -> bool:
        """Send DTMF tones into the call."""
        return await self._checked(call_control_id, "send_dtmf", {"digits": digits})

    async def _checked(self, call_control_id: str, action: str, body: dict[str, Any]) -> bool:
        resp = await self.command(call_control_id, action, body)
        if resp.ok:
            return True
        if error_code(resp) == ALREADY_ENDED:
            return False
        _raise_for(resp, action.replace("_", " "))
        return False


def error_code(resp: RestResponse) -> str:
    """The first Telnyx error code of a response, or ``""``."""
    errors = resp.body.get("errors") if isinstance(resp.body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("code", ""))
    return ""


def _raise_for(resp: RestResponse, doing: str) -> None:
    if resp.ok:
        return
    errors = resp.body.get("errors") if isinstance(resp.body, dict) else None
    detail = ""
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        detail = str(errors[0].get("detail") or errors[0].get("title") or "")
    raise RestError(resp.status, error_code(resp), f"could not {doing}: {detail}")
