"""Signing test requests the way the carriers do, with the carriers' own reference code:
twilio-python's RequestValidator and PyNaCl Ed25519 keys."""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import urlencode

from nacl.signing import SigningKey
from twilio.request_validator import RequestValidator

TWILIO_SID = "AC" + "1f" * 16
TWILIO_TOKEN = "test-auth-token-0123456789"
PUBLIC_URL = "https://voice.example.com"


def call_sid(n: int = 1) -> str:
    """A well-formed CallSid."""
    return "CA" + f"{n:032x}"


def twilio_form(url: str, params: dict[str, str] | list[tuple[str, str]],
                token: str = TWILIO_TOKEN, *, shared_key: tuple[str, str] | None = None,
                algorithm: str = "HMAC_SHA256") -> tuple[bytes, dict[str, str]]:
    """A form body and headers signed like Twilio signs them (official validator code).

    ``shared_key`` (key id, secret): signed as under a Webhook Setting with a SharedKey —
    ``algorithm`` with the key's secret over the same string, the key and algorithm named in
    ``X-Twilio-Webhooks-Signature-Settings`` (twilio-python 9.13+, which implements it)."""
    if shared_key is not None:
        body, headers = _signed_form(url, params, shared_key[1], algorithm)
        headers["X-Twilio-Webhooks-Signature-Settings"] = \
            f"key={shared_key[0]},algorithm={algorithm}"
        return body, headers
    return _signed_form(url, params, token, "HMAC_SHA1")


def _signed_form(url: str, params: dict[str, str] | list[tuple[str, str]], token: str,
                 algorithm: str) -> tuple[bytes, dict[str, str]]:
    validator = RequestValidator(token)
    if isinstance(params, dict):
        items = list(params.items())
    else:
        items = list(params)
    multi: dict[str, list[str]] = {}
    for k, v in items:
        multi.setdefault(k, []).append(v)

    class _Multi(dict):  # twilio-python reads repeated keys through getall()
        def getall(self, key: str) -> list[str]:
            return multi[key]

    sig = validator.compute_signature(url, _Multi({k: v[0] for k, v in multi.items()}),
                                      algorithm)
    return urlencode(items).encode(), {
        "X-Twilio-Signature": sig,
        "Content-Type": "application/x-www-form-urlencoded",
    }


class TelnyxSigner:
    """An Ed25519 key pair standing in for Telnyx's webhook key."""

    def __init__(self) -> None:
        self.key = SigningKey.generate()
        self.public_key_b64 = base64.b64encode(bytes(self.key.verify_key)).decode()

    def sign(self, body: bytes, ts: int | None = None) -> dict[str, str]:
        """Headers for ``body`` as Telnyx sends them."""
        stamp = str(int(time.time()) if ts is None else ts)
        sig = self.key.sign(stamp.encode() + b"|" + body).signature
        return {"telnyx-signature-ed25519": base64.b64encode(sig).decode(),
                "telnyx-timestamp": stamp, "Content-Type": "application/json"}


def telnyx_event(event_type: str, payload: dict[str, Any], event_id: str = "evt-1"
                 ) -> bytes:
    """A Call Control webhook body (envelope as Telnyx sends it)."""
    return json.dumps({
        "data": {"record_type": "event", "event_type": event_type, "id": event_id,
                 "occurred_at": "2026-11-26T10:00:00.000000Z", "payload": payload},
        "meta": {"attempt": 1, "delivered_to": f"{PUBLIC_URL}/webhooks/telnyx/voice"},
    }).encode()
