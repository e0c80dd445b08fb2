"""Signing the requests patterd sends to the user's own endpoints (tools, the ``webhook`` agent).

The header ``X-Patterd-Signature: t=<unix seconds>,v1=<hex>`` carries
``HMAC-SHA256(secret, f"{t}.".encode() + body)`` over the exact body bytes sent. An endpoint
checks it with :func:`verify` (or the same three lines in its own language): recompute the HMAC
over ``t`` + ``.`` + the raw body, compare in constant time, and refuse timestamps older or
newer than a few minutes so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Patterd-Signature"
DEFAULT_TOLERANCE = 300


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Patterd-Signature`` value for ``body`` (``timestamp``: now, in Unix seconds)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_digest(secret, t, body)}"


def verify(secret: str, body: bytes, header: str | None, *, tolerance: int = DEFAULT_TOLERANCE,
           now: float | None = None) -> bool:
    """True when ``header`` is a valid signature of ``body`` under ``secret``, made within
    ``tolerance`` seconds of ``now``. Several ``v1`` values (e.g. during a secret rotation) are
    accepted if any matches; anything malformed is simply False."""
    if not secret or not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = _digest(secret, timestamp, body)
    # Compare every candidate (no early exit) so timing says nothing about which one matched.
    ok = False
    for value in candidates:
        ok |= hmac.compare_digest(expected.encode(), value.encode("ascii", "replace"))
    return ok


__all__ = ["DEFAULT_TOLERANCE", "SIGNATURE_HEADER", "sign", "verify"]
