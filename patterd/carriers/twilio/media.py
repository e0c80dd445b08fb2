"""Twilio Media Streams frames ⇄ media events (bidirectional ``<Connect><Stream>``)."""

from __future__ import annotations

import base64
import json
from typing import Any

from ..base import MalformedFrame, StreamStarted, UnservableStart
from ..frames import JsonFrames, field_obj, str_params


class TwilioMedia(JsonFrames):
    """One stream's translator; remembers the ``streamSid`` every outbound frame needs."""

    __slots__ = ("stream_sid", "_prefix")
    tx_codec = "PCMU"

    def __init__(self) -> None:
        self.stream_sid = ""
        self._prefix = ""

    def _start(self, msg: dict[str, Any]) -> StreamStarted:
        start = field_obj(msg, "start")
        sid = start.get("streamSid") or msg.get("streamSid")
        call_sid = start.get("callSid")
        if not isinstance(sid, str) or not sid or not isinstance(call_sid, str) or not call_sid:
            raise MalformedFrame("start: streamSid and callSid are required")
        params = str_params(start.get("customParameters"), "start.customParameters")
        fmt = start.get("mediaFormat") or {}
        encoding = fmt.get("encoding", "audio/x-mulaw") if isinstance(fmt, dict) else ""
        if encoding != "audio/x-mulaw":
            raise UnservableStart(f"start.mediaFormat.encoding: unsupported {encoding!r}"[:100],
                                  code=4415)
        self.stream_sid = sid
        self._prefix = ('{"event":"media","streamSid":' + json.dumps(sid)
                        + ',"media":{"payload":"')
        return StreamStarted(sid, call_sid, "PCMU", 8000, params)

    def audio(self, payload: bytes) -> str:
        """A ``media`` frame (raw μ-law 8 kHz, base64)."""
        return self._prefix + base64.b64encode(payload).decode("ascii") + '"}}'

    def mark(self, name: str) -> str:
        """A ``mark`` frame."""
        return json.dumps({"event": "mark", "streamSid": self.stream_sid,
                           "mark": {"name": name}})

    def clear(self) -> str:
        """A ``clear`` frame."""
        return json.dumps({"event": "clear", "streamSid": self.stream_sid})
