"""Hiding credentials in what ``patterd check`` and configuration errors show."""

from __future__ import annotations

import re

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
# Query parameters that carry credentials (api_key, access_token, X-Amz-Signature, pwd, …).
_SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|sig|auth|credential|session",
                           re.IGNORECASE)


def mask_url(text: str) -> str:
    """``text`` with every URL's password and secret-looking query values replaced by ``***``.

    ``https://bob:hunter2@proxy/v1?api_key=k&model=m`` becomes
    ``https://bob:***@proxy/v1?api_key=***&model=m``; user names and hosts stay readable.
    """
    return _URL.sub(lambda m: _mask_one(m.group(0)), text)


def _mask_one(url: str) -> str:
    scheme, _, rest = url.partition("://")
    cut = min([i for i in (rest.find(c) for c in "/?#") if i >= 0], default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    userinfo, at, host = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.split(':', 1)[0]}:***@{host}"
    before, hashmark, fragment = tail.partition("#")
    path, question, query = before.partition("?")
    query = "&".join(_mask_param(p) for p in query.split("&"))
    fragment = "&".join(_mask_param(p) for p in fragment.split("&"))  # #access_token=…
    return f"{scheme}://{authority}{path}{question}{query}{hashmark}{fragment}"


def _mask_param(param: str) -> str:
    name, eq, value = param.partition("=")
    return f"{name}=***" if eq and value and _SECRET_PARAM.search(name) else param


__all__ = ["mask_url"]
