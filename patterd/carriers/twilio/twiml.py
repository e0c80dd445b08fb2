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


def dial(target: str, caller_id: str = "") -> str:
    """A cold transfer: ``<Dial>`` an E.164 number or a SIP URI."""
    from xml.sax.saxutils import escape

    noun = "Sip" if target.startswith(("sip:", "sips:")) else "Number"
    attr = f" callerId={quoteattr(caller_id)}" if caller_id else ""
    return (f"{XML_HEAD}<Response><Dial{attr}><{noun}>{escape(target)}</{noun}></Dial>"
            "</Response>")


def play_digits_then_stream(digits: str, stream_url: str, parameters: Mapping[str, str]
                            ) -> str:
    """Send DTMF (``w`` = 0.5 s pause) and re-attach the media stream: any TwiML update ends
    the running ``<Connect><Stream>``, so the same document starts a new one."""
    stream = connect_stream(stream_url, parameters)
    body = stream[len(XML_HEAD) + len("<Response>"):]
    return f"{XML_HEAD}<Response><Play digits={quoteattr(digits)}/>{body}"
