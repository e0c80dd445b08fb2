"""Unguessable per-call media-stream tokens for Telnyx, which does not sign its WS upgrade.

A token names the call it was minted for and carries an HMAC-SHA256 tag keyed from the API key,
which every replica has, so the media socket may land on any replica and still be verified
without shared memory. The media handler checks the token's call id against the ``start``
frame's ``call_control_id``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

TOKEN_TTL = 24 * 3600  # the stream must connect within this long of being minted
_CONTEXT = b"patterd/telnyx-media-token/v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StreamTokens:
    """Mints and verifies tokens; one instance per carrier."""

    __slots__ = ("_key",)

    def __init__(self, api_key: str) -> None:
        self._key = hmac.new(api_key.encode("utf-8"), _CONTEXT, hashlib.sha256).digest()

    def mint(self, call_control_id: str, *, now: float | None = None) -> str:
        """A URL-safe token for ``call_control_id``."""
        issued = int(time.time() if now is None else now)
        payload = f"{call_control_id}|{issued}".encode("utf-8")
        tag = hmac.new(self._key, payload, hashlib.sha256).digest()[:24]
        return f"{_b64(payload)}.{_b64(tag)}"

    def verify(self, token: str, *, now: float | None = None) -> str | None:
        """The call id the token was minted for, or None if forged, malformed or expired."""
        try:
            payload_b64, tag_b64 = token.split(".", 1)
            payload = _unb64(payload_b64)
            tag = _unb64(tag_b64)
        except (ValueError, UnicodeEncodeError):
            return None
        expected = hmac.new(self._key, payload, hashlib.sha256).digest()[:24]
        if not hmac.compare_digest(tag, expected):
            return None
        call_id, _, issued = payload.decode("utf-8", "replace").rpartition("|")
        if not issued.isdigit():
            return None
        age = (time.time() if now is None else now) - int(issued)
        if age > TOKEN_TTL or age < -300:
            return None
        return call_id
