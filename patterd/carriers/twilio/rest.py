"""Twilio's 2010-04-01 REST API: the few requests a gateway makes."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from ...config import TwilioSettings
from ..rest import ErrorHook, RestClient, RestError, RestResponse, SessionSource, reported

ALREADY_ENDED = 20404


def basic_auth(user: str, password: str) -> str:
    """An HTTP Basic ``Authorization`` value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class TwilioRest:
    """Form-encoded requests under ``/2010-04-01/Accounts/{AccountSid}``, HTTP Basic auth.
    ``on_error`` hears of every action that failed (``patterd_backend_errors_total``);
    "call already ended" (20404) is not a failure."""

    def __init__(self, session: SessionSource, settings: TwilioSettings,
                 on_error: ErrorHook | None = None) -> None:
        self._client = RestClient(
            session, f"{settings.api_base_url}/2010-04-01/Accounts/{settings.account_sid}",
            headers={"Authorization": basic_auth(settings.account_sid, settings.auth_token)},
            on_error=on_error)

    @reported
    async def find_number(self, phone_number: str) -> dict[str, Any] | None:
        """The IncomingPhoneNumber resource for ``phone_number``, or None."""
        resp = await self._client.request("GET", "/IncomingPhoneNumbers.json",
                                          params={"PhoneNumber": phone_number})
        _raise_for(resp, "list incoming phone numbers")
        for item in resp.body.get("incoming_phone_numbers") or []:
            if isinstance(item, dict) and item.get("phone_number") == phone_number:
                return item
        return None

    @reported
    async def configure_number(self, phone_number: str, voice_url: str, status_url: str) -> str:
        """Point the number's voice webhook (and its status callback) at this daemon.

        Returns the number's ``PN…`` sid; raises :class:`RestError` when it cannot.
        """
        number = await self.find_number(phone_number)
        if number is None:
            raise RestError(404, "not-found", "the number is not among this account's "
                                              "IncomingPhoneNumbers")
        sid = str(number.get("sid", ""))
        resp = await self._client.request(
            "POST", f"/IncomingPhoneNumbers/{quote(sid, safe='')}.json",
            form=[("VoiceUrl", voice_url), ("VoiceMethod", "POST"),
                  ("StatusCallback", status_url), ("StatusCallbackMethod", "POST")])
        _raise_for(resp, "update the incoming phone number")
        return sid

    async def update_call(self, call_sid: str, form: list[tuple[str, str]]) -> RestResponse:
        """``POST /Calls/{sid}.json`` (TwiML update, redirect or status change)."""
        return await self._client.request("POST", f"/Calls/{quote(call_sid, safe='')}.json",
                                          form=form)

    async def fetch_call(self, call_sid: str) -> dict[str, Any]:
        """``GET /Calls/{sid}.json``: the Call resource (``status``, ``duration``, ``price``
        …) or :class:`RestError` (not reported: the price fetch counts its failures)."""
        resp = await self._client.request("GET", f"/Calls/{quote(call_sid, safe='')}.json")
        _raise_for(resp, "fetch the call")
        return resp.body if isinstance(resp.body, dict) else {}

    @reported
    async def hangup(self, call_sid: str) -> bool:
        """End a call; True also when Twilio says it had already ended (20404)."""
        resp = await self.update_call(call_sid, [("Status", "completed")])
        if resp.ok or _code(resp) == ALREADY_ENDED:
            return True
        _raise_for(resp, "hang up")
        return False

    @reported
    async def create_call(self, form: list[tuple[str, str]]) -> dict[str, Any]:
        """``POST /Calls.json``; the call resource (its ``sid``) or :class:`RestError`."""
        resp = await self._client.request("POST", "/Calls.json", form=form)
        _raise_for(resp, "place the call")
        return resp.body if isinstance(resp.body, dict) else {}

    async def start_recording(self, call_sid: str, callback_url: str, channels: str) -> str:
        """Record the live call; returns the ``RE…`` sid. Not reported to ``on_error``: the
        call session counts a failed recording start itself."""
        resp = await self._client.request(
            "POST", f"/Calls/{quote(call_sid, safe='')}/Recordings.json",
            form=[("RecordingChannels", channels), ("RecordingStatusCallback", callback_url),
                  ("RecordingStatusCallbackMethod", "POST"),
                  ("RecordingStatusCallbackEvent", "in-progress"),
                  ("RecordingStatusCallbackEvent", "completed"),
                  ("RecordingStatusCallbackEvent", "absent")])
        _raise_for(resp, "start recording")
        return str(resp.body.get("sid", "")) if isinstance(resp.body, dict) else ""

    @reported
    async def say_and_hangup(self, call_sid: str, text: str) -> bool:
        """Have Twilio speak ``text`` and hang up (a voicemail left without our stream)."""
        from xml.sax.saxutils import escape

        from .twiml import XML_HEAD
        doc = f"{XML_HEAD}<Response><Say>{escape(text)}</Say><Hangup/></Response>"
        return await _update_twiml(self, call_sid, doc, "leave the voicemail")

    @reported
    async def transfer(self, call_sid: str, target: str, caller_id: str = "") -> bool:
        """Cold-transfer the call with ``<Dial>`` (this ends our media stream)."""
        from .twiml import dial
        return await _update_twiml(self, call_sid, dial(target, caller_id), "transfer")

    @reported
    async def send_dtmf(self, call_sid: str, digits: str, stream_url: str,
                        parameters: dict[str, str]) -> bool:
        """Play DTMF into the call, then re-attach the media stream."""
        from .twiml import play_digits_then_stream
        doc = play_digits_then_stream(digits, stream_url, parameters)
        return await _update_twiml(self, call_sid, doc, "send DTMF")


    async def restream(self, call_sid: str, stream_url: str, parameters: dict[str, str]
                       ) -> bool:
        """Point the call's media at ``stream_url`` again (the running stream ends)."""
        from .twiml import connect_stream
        return await _update_twiml(self, call_sid, connect_stream(stream_url, parameters),
                                   "move the media stream")


async def _update_twiml(rest: "TwilioRest", call_sid: str, doc: str, doing: str) -> bool:
    resp = await rest.update_call(call_sid, [("Twiml", doc)])
    if resp.ok:
        return True
    if _code(resp) == ALREADY_ENDED:
        return False
    _raise_for(resp, doing)
    return False


def _code(resp: RestResponse) -> int | None:
    code = resp.body.get("code") if isinstance(resp.body, dict) else None
    return code if isinstance(code, int) else None


def _raise_for(resp: RestResponse, doing: str) -> None:
    if resp.ok:
        return
    body = resp.body if isinstance(resp.body, dict) else {}
    raise RestError(resp.status, str(body.get("code", "")),
                    f"could not {doing}: {body.get('message') or body.get('raw') or ''}",
                    simulator=resp.simulator)
