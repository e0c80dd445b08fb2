"""Live-call actions through Telnyx Call Control."""

from __future__ import annotations

from ...config import Config, TelnyxSettings
from ..rest import SessionSource
from .rest import TelnyxRest


class TelnyxControl:
    """Hang-up, transfer and DTMF for Telnyx calls (the stream stays up for DTMF)."""

    dtmf_ends_stream = False

    def __init__(self, session: SessionSource, settings: TelnyxSettings, config: Config) -> None:
        self._rest = TelnyxRest(session, settings)
        self._from = config.phone_number

    async def hangup(self, call_id: str) -> bool:
        """``actions/hangup`` (90018 = already ended, also fine)."""
        return await self._rest.hangup(call_id)

    async def transfer(self, call_id: str, target: str) -> bool:
        """``actions/transfer``."""
        return await self._rest.transfer(call_id, target, self._from)

    async def send_dtmf(self, call_id: str, digits: str, parameters: dict[str, str]) -> bool:
        """``actions/send_dtmf``."""
        return await self._rest.send_dtmf(call_id, digits)
