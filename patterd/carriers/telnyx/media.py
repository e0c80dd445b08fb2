"""Telnyx media-streaming frames ⇄ media events (``rtp`` bidirectional mode)."""

from __future__ import annotations

import base64
import json
from typing import Any

from ..base import MalformedFrame, StreamStarted
from ..frames import JsonFrames, field_obj, str_params

_CLEAR = '{"event":"clear"}'
_MEDIA_PREFIX = '{"event":"media","media":{"payload":"'


class TelnyxMedia(JsonFrames):
    """One stream's translator. The inbound codec is whatever ``start.media_format`` says;
    outbound is the ``stream_bidirectional_codec`` we asked for (PCMU)."""

    __slots__ = ("stream_id",)
    tx_codec = "PCMU"
    ignored_events = frozenset({"connected", "error"})

    def __init__(self) -> None:
        self.stream_id = ""

    def _start(self, msg: dict[str, Any]) -> StreamStarted:
        start = field_obj(msg, "start")
        ccid = start.get("call_control_id")
        sid = msg.get("stream_id") or start.get("stream_id") or ""
        if not isinstance(ccid, str) or not ccid or not isinstance(sid, str):
            raise MalformedFrame("start.call_control_id is required")
        fmt = start.get("media_format") or {}
        if not isinstance(fmt, dict):
            raise MalformedFrame("start.media_format: expected an object")
        # A codec we cannot decode (G722, OPUS, AMR-WB) still starts the stream: the media
        # route then ends the call cleanly instead of leaving the caller in silence.
        encoding = str(fmt.get("encoding") or "PCMU").upper()[:16]
        try:
            rate = int(fmt.get("sample_rate") or 8000)
        except (TypeError, ValueError):
            raise MalformedFrame("start.media_format.sample_rate: not a number") from None
        if not 0 < rate <= 48000:
            raise MalformedFrame(f"start.media_format.sample_rate: unsupported {rate}")
        params = str_params(start.get("custom_parameters"), "start.custom_parameters")
        state = start.get("client_state")
        if isinstance(state, str):
            params["client_state"] = state
        self.stream_id = sid
        return StreamStarted(sid, ccid, encoding, rate, params)

    def audio(self, payload: bytes) -> str:
        """A ``media`` frame (raw PCMU 8 kHz RTP payload, base64)."""
        return _MEDIA_PREFIX + base64.b64encode(payload).decode("ascii") + '"}}'

    def mark(self, name: str) -> str:
        """A ``mark`` frame."""
        return json.dumps({"event": "mark", "mark": {"name": name}})

    def clear(self) -> str:
        """A ``clear`` frame."""
        return _CLEAR
