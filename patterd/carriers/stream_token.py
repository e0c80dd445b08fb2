"""Per-call media-stream tokens, for both carriers.

Neither carrier proves which call a media stream belongs to: Twilio signs the WebSocket
upgrade over the bare ``wss://`` URL (one value for every call) and not the ``<Parameter>``s
of the ``start`` frame; Telnyx signs nothing on its stream. So the daemon hands the carrier a
token when it attaches a stream to a call — a Twilio ``<Parameter>``, the Telnyx
``stream_url`` path — and accepts a ``start`` only with a token that names that call.

A token carries the call it was minted for (or, for a call we dial, ``out:<reference>``
since the carrier has not named the call yet), the call's direction and an expiry, with an
HMAC-SHA256 tag keyed from the carrier credential every replica has: any replica verifies it
without shared memory. Whether a token was used already is the gateway's business
(:mod:`patterd.call.stream_gate`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

OUTBOUND_REF = "out:"     # the subject of a dialled call's token: out:<reference of the dial>
STREAM_TTL = 300.0        # an answered call's stream connects within seconds; 5 min to spare
HANDOFF_TTL = 60.0        # a moved stream connects within a second or two
HANDOFF_PARAM = "handoff"  # the stream parameter naming a hand-off's stored state
TAG_BYTES = 18


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token says."""

    subject: str       # the call id, or OUTBOUND_REF + the dial's reference
    direction: str
    expires: int       # Unix time
    tag: bytes         # this token's identity (single use)

    @property
    def dial_ref(self) -> str:
        """The dial's reference for a dialled call's token (``""`` otherwise)."""
        return self.subject[len(OUTBOUND_REF):] if self.subject.startswith(OUTBOUND_REF) else ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StreamTokens:
    """Mints and reads tokens under one key (``secret`` × ``context``)."""

    __slots__ = ("_key",)

    def __init__(self, secret: str, context: bytes) -> None:
        self._key = hmac.new(secret.encode("utf-8"), context, hashlib.sha256).digest()

    def mint(self, subject: str, direction: str, ttl: float = STREAM_TTL, *,
             now: float | None = None) -> str:
        """A URL-safe token for ``subject`` valid ``ttl`` seconds from ``now``."""
        expires = int((time.time() if now is None else now) + ttl)
        nonce = secrets.token_hex(4)   # two tokens for one call are two tokens
        payload = f"{subject}|{direction}|{expires}|{nonce}".encode("utf-8")
        return f"{_b64(payload)}.{_b64(self._tag(payload))}"

    def read(self, token: str, *, now: float | None = None) -> Grant | None:
        """What the token grants, or None if it is forged, malformed or expired."""
        if not isinstance(token, str) or len(token) > 1024:
            return None
        try:
            payload_b64, tag_b64 = token.split(".", 1)
            payload, tag = _unb64(payload_b64), _unb64(tag_b64)
        except (ValueError, UnicodeEncodeError):
            return None
        if not hmac.compare_digest(tag, self._tag(payload)):
            return None
        try:
            subject, direction, expires, _nonce = payload.decode("utf-8").rsplit("|", 3)
        except (UnicodeDecodeError, ValueError):
            return None
        if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
            return None
        return Grant(subject, direction, int(expires), tag)

    def verify(self, token: str, *, now: float | None = None) -> str | None:
        """The subject the token was minted for, or None (see :meth:`read`)."""
        grant = self.read(token, now=now)
        return None if grant is None else grant.subject

    def _tag(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:TAG_BYTES]
