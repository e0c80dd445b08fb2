"""TwiML documents the daemon returns or sends. Every attribute value is XML-escaped."""

from __future__ import annotations

from collections.abc import Mapping
from xml.sax.saxutils import quoteattr

XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>'


def connect_stream(stream_url: str, parameters: Mapping[str, str], *, name: str = "patterd"
                   ) -> str:
    """``<Connect><Stream>`` with the call's context as ``<Parameter>``s (never a query string)."""
    params = "".join(f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>"
                     for k, v in parameters.items())
    return (f"{XML_HEAD}<Response><Connect><Stream url={quoteattr(stream_url)} "
            f"name={quoteattr(name)}>{params}</Stream></Connect></Response>")


def reject(reason: str = "busy") -> str:
    """Decline a call before it is answered (no charge for the caller)."""
    return f"{XML_HEAD}<Response><Reject reason={quoteattr(reason)}/></Response>"
