"""The browser test call's frames ⇄ media events: the JSON frames of Twilio's and Telnyx's
media streams (``media`` with base64 audio, ``dtmf``, ``mark``, ``stop``), so one translator
shape serves all three.

From the page: ``{"event": "start", "start": {"encoding": "PCMU", "sampleRate": 8000}}`` once,
then ``media``/``dtmf``/``mark``/``stop`` frames. To the page: ``media`` (μ-law 8 kHz, base64),
``mark`` (echo it once the audio before it has played), ``clear`` (drop what is queued).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ..base import MalformedFrame, StreamStarted
from ..frames import JsonFrames, field_obj

ENCODINGS = frozenset({"PCMU", "PCMA", "L16"})


class BrowserMedia(JsonFrames):
    """One browser call's translator; the call id is the daemon's (the page has none)."""

    __slots__ = ("call_id", "parameters")
    tx_codec = "PCMU"

    def __init__(self, call_id: str, parameters: dict[str, str] | None = None) -> None:
        self.call_id = call_id
        self.parameters = dict(parameters or {})

    def _start(self, msg: dict[str, Any]) -> StreamStarted:
        start = field_obj(msg, "start")
        encoding = start.get("encoding", "PCMU")
        rate = start.get("sampleRate", 8000)
        if encoding not in ENCODINGS:
            raise MalformedFrame(f"start.encoding: expected one of {sorted(ENCODINGS)}")
        if isinstance(rate, bool) or not isinstance(rate, int):
            raise MalformedFrame("start.sampleRate: expected an integer")
        return StreamStarted(self.call_id, self.call_id, encoding, rate, dict(self.parameters))

    def audio(self, payload: bytes) -> str:
        """A ``media`` frame (μ-law 8 kHz, base64)."""
        return '{"event":"media","media":{"payload":"' + \
            base64.b64encode(payload).decode("ascii") + '"}}'

    def mark(self, name: str) -> str:
        """A ``mark`` frame."""
        return json.dumps({"event": "mark", "mark": {"name": name}})

    def clear(self) -> str:
        """A ``clear`` frame."""
        return '{"event":"clear"}'


__all__ = ["BrowserMedia", "ENCODINGS"]
