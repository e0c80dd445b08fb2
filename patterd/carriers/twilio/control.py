"""Live-call actions through Twilio's REST API."""

from __future__ import annotations

from ...config import Config, TwilioSettings
from ..rest import SessionSource
from .rest import TwilioRest


class TwilioControl:
    """Hang-up, transfer and DTMF for Twilio calls. Any TwiML update ends the running stream,
    so DTMF re-attaches it in the same update."""

    dtmf_ends_stream = True

    def __init__(self, session: SessionSource, settings: TwilioSettings, config: Config,
                 stream_url: str) -> None:
        self._rest = TwilioRest(session, settings)
        self._caller_id = config.phone_number
        self._stream_url = stream_url

    async def hangup(self, call_id: str) -> bool:
        """``Status=completed`` (20404 = already ended, also fine)."""
        return await self._rest.hangup(call_id)

    async def transfer(self, call_id: str, target: str) -> bool:
        """``<Dial>`` the target with our number as caller id."""
        return await self._rest.transfer(call_id, target, self._caller_id)

    async def send_dtmf(self, call_id: str, digits: str, parameters: dict[str, str]) -> bool:
        """``<Play digits>`` then ``<Connect><Stream>`` again, marked as a resumed stream."""
        params = {**parameters, "resumed": "1"}
        return await self._rest.send_dtmf(call_id, digits, self._stream_url, params)
