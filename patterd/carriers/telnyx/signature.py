"""Telnyx webhook signatures: Ed25519 over ``timestamp|raw body``.

The public key may be given as the raw 32-byte key in base64 (what the Telnyx portal shows and
the official SDK requires), as SPKI DER in base64, or as a PEM block.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

SPKI_ED25519_PREFIX = bytes.fromhex("302a300506032b6570032100")
TOLERANCE_SECONDS = 300
# Telnyx sends one signature (a few during a key rotation at most): each candidate costs an
# Ed25519 verification, so a header listing dozens is refused before any is tried.
MAX_CANDIDATES = 5
_DIGITS = re.compile(r"[0-9]{1,12}")


class KeyFormatError(ValueError):
    """The configured public key is not an Ed25519 key in a format we accept."""


def load_public_key(text: str) -> VerifyKey:
    """Decode a raw-base64, SPKI-DER-base64 or PEM Ed25519 public key."""
    body = text.strip()
    if body.startswith("-----BEGIN"):
        lines = [ln for ln in body.splitlines() if ln and not ln.startswith("-----")]
        body = "".join(lines)
    try:
        raw = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("expected a base64 Ed25519 public key (raw 32 bytes, SPKI DER "
                             "or PEM), but it is not valid base64") from None
    if len(raw) == 44 and raw.startswith(SPKI_ED25519_PREFIX):
        raw = raw[len(SPKI_ED25519_PREFIX):]
    if len(raw) != 32:
        raise KeyFormatError(f"expected an Ed25519 public key of 32 bytes (or 44-byte SPKI), "
                             f"got {len(raw)} bytes after base64 decoding")
    return VerifyKey(raw)


class SignatureVerifier:
    """Verifies ``telnyx-signature-ed25519`` and ``telnyx-timestamp`` on a raw body."""

    __slots__ = ("_key", "_clock", "_tolerance")

    def __init__(self, public_key: str, *, clock: Callable[[], float] = time.time,
                 tolerance: float = TOLERANCE_SECONDS) -> None:
        self._key = load_public_key(public_key)
        self._clock = clock
        self._tolerance = tolerance

    def check(self, body: bytes, signature_header: str, timestamp_header: str) -> str:
        """``""`` when the request is authentic, else the reason it is not."""
        if not signature_header or not timestamp_header:
            return "missing telnyx-signature-ed25519 or telnyx-timestamp header"
        ts = timestamp_header.strip()
        if not _DIGITS.fullmatch(ts):
            return "telnyx-timestamp is not a Unix time in seconds"
        if abs(self._clock() - int(ts)) > self._tolerance:
            return "telnyx-timestamp outside the allowed window"
        candidates = signature_header.split(",")
        if len(candidates) > MAX_CANDIDATES:
            return f"more than {MAX_CANDIDATES} signatures in telnyx-signature-ed25519"
        message = ts.encode("ascii") + b"|" + body
        for candidate in candidates:
            try:
                sig = base64.b64decode(candidate.strip(), validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(sig) != 64:
                continue
            try:
                self._key.verify(message, sig)
                return ""
            except BadSignatureError:
                continue
        return "signature does not verify"
