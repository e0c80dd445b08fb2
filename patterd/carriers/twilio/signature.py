"""``X-Twilio-Signature``: HMAC-SHA1 over the public URL plus the sorted form fields.

Mirrors twilio-python's ``RequestValidator`` (the reference implementation): parameter names
sorted, each name's distinct values sorted, ``name + value`` appended to the URL; the URL is
tried with and without the scheme's default port because Twilio signs either form. The URL is
rebuilt from the configured ``public_url`` — never from ``Host`` or ``X-Forwarded-*`` headers,
which a client controls.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit


def compute_signature(token: bytes, url: str, params: Iterable[tuple[str, str]]) -> bytes:
    """The base64 signature Twilio would send for ``url`` and form ``params``."""
    grouped: dict[str, set[str]] = {}
    for name, value in params:
        grouped.setdefault(name, set()).add(value)
    parts = [url]
    for name in sorted(grouped):
        for value in sorted(grouped[name]):
            parts.append(name)
            parts.append(value)
    mac = hmac.new(token, "".join(parts).encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest())


def url_variants(url: str) -> tuple[str, str]:
    """``url`` without and with the explicit default port, as twilio-python tries them."""
    parts = urlsplit(url)
    if parts.port:
        bare = parts._replace(netloc=parts.netloc.rsplit(":", 1)[0])
        return urlunsplit(bare), url
    port = 443 if parts.scheme in ("https", "wss") else 80
    with_port = parts._replace(netloc=f"{parts.netloc}:{port}")
    return url, urlunsplit(with_port)


class SignatureVerifier:
    """Checks Twilio signatures for requests that reached us under ``public_url``."""

    __slots__ = ("_token", "_base", "_prefix")

    def __init__(self, auth_token: str, public_url: str) -> None:
        self._token = auth_token.encode("utf-8")
        parts = urlsplit(public_url.rstrip("/"))
        self._base = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/")

    def public_url_for(self, raw_path_qs: str, *, scheme: str | None = None) -> str:
        """The URL the carrier called, given the path and raw query the daemon saw.

        A reverse proxy may or may not strip a path prefix of ``public_url``; both work.
        """
        path = raw_path_qs
        if self._prefix and not path.startswith(self._prefix + "/"):
            path = self._prefix + path
        base = self._base
        if scheme is not None:
            base = scheme + base[base.index("://"):]
        return base + path

    def verify(self, raw_path_qs: str, params: Iterable[tuple[str, str]], signature: str,
               *, scheme: str | None = None) -> bool:
        """True when ``signature`` matches, comparing in constant time."""
        if not signature:
            return False
        given = signature.strip().encode("ascii", "replace")
        url = self.public_url_for(raw_path_qs, scheme=scheme)
        items = list(params)
        ok = False
        for candidate in url_variants(url):
            # Evaluate both variants always: no early exit that would leak which one matched.
            ok |= hmac.compare_digest(compute_signature(self._token, candidate, items), given)
        return ok
