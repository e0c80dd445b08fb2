"""``X-Twilio-Signature``: HMAC-SHA1 over the public URL plus the sorted form fields — or,
when a Twilio Webhook Rule applies a Setting signed with a SharedKey, HMAC-SHA256 (or -SHA1)
with that key's secret over the same string, the key and algorithm named in
``X-Twilio-Webhooks-Signature-Settings: key=<key id>,algorithm=HMAC_SHA256``.

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
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit


SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
HASHES: dict[str, Callable[..., Any]] = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}


def compute_signature(token: bytes, url: str, params: Iterable[tuple[str, str]],
                      digest: Callable[..., Any] = hashlib.sha1) -> bytes:
    """The base64 signature Twilio would send for ``url`` and form ``params``."""
    grouped: dict[str, set[str]] = {}
    for name, value in params:
        grouped.setdefault(name, set()).add(value)
    parts = [url]
    for name in sorted(grouped):
        for value in sorted(grouped[name]):
            parts.append(name)
            parts.append(value)
    mac = hmac.new(token, "".join(parts).encode("utf-8"), digest)
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


def read_settings(header: str) -> tuple[str, str]:
    """``(key id, algorithm)`` named in ``X-Twilio-Webhooks-Signature-Settings``
    (``key=…,algorithm=…``; the algorithm upper-cased, ``HMAC_SHA1`` when not named)."""
    key, algorithm = "", "HMAC_SHA1"
    for part in header.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            continue
        if name.strip() == "key":
            key = value.strip()
        elif name.strip() == "algorithm" and value.strip():
            algorithm = value.strip().upper()
    return key, algorithm


class SignatureVerifier:
    """Checks Twilio signatures for requests that reached us under ``public_url``: with the
    auth token, or with one of ``signing_keys`` (SharedKey id → secret) when the request names
    it in its settings header."""

    __slots__ = ("_token", "_base", "_prefix", "_keys")

    def __init__(self, auth_token: str, public_url: str,
                 signing_keys: Mapping[str, str] | None = None) -> None:
        self._token = auth_token.encode("utf-8")
        parts = urlsplit(public_url.rstrip("/"))
        self._base = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/")
        self._keys = {k: v.encode("utf-8") for k, v in (signing_keys or {}).items()}

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

    def check(self, raw_path_qs: str, params: Iterable[tuple[str, str]], signature: str,
              *, settings: str = "", scheme: str | None = None) -> str:
        """``""`` when ``signature`` matches (compared in constant time), else why not.
        ``settings``: the request's ``X-Twilio-Webhooks-Signature-Settings`` header."""
        if not signature:
            return "missing X-Twilio-Signature header"
        secret, digest = self._token, hashlib.sha1
        if settings:
            key, algorithm = read_settings(settings)
            if key not in self._keys:
                return (f"{SETTINGS_HEADER} names a signing key not in carrier.signing_keys "
                        f"({key[:40]!r})")
            if algorithm not in HASHES:
                return f"{SETTINGS_HEADER}: unsupported algorithm {algorithm[:20]!r}"
            secret, digest = self._keys[key], HASHES[algorithm]
        given = signature.strip().encode("ascii", "replace")
        url = self.public_url_for(raw_path_qs, scheme=scheme)
        items = list(params)
        ok = False
        for candidate in url_variants(url):
            # Evaluate both variants always: no early exit that would leak which one matched.
            ok |= hmac.compare_digest(compute_signature(secret, candidate, items, digest), given)
        return "" if ok else "signature does not match"

    def verify(self, raw_path_qs: str, params: Iterable[tuple[str, str]], signature: str,
               *, settings: str = "", scheme: str | None = None) -> bool:
        """True when :meth:`check` finds nothing wrong."""
        return not self.check(raw_path_qs, params, signature, settings=settings, scheme=scheme)
