"""What Twilio's and Telnyx's media-stream protocols share: JSON text frames keyed by
``event``, base64 audio in ``media.payload``, ``dtmf``, ``mark`` echoes and ``stop``."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from .base import (AudioIn, DtmfIn, Ignored, MalformedFrame, MarkPlayed, MediaEvent,
                   StreamStarted, StreamStopped, UnservableStart)

DTMF_DIGITS = frozenset("0123456789*#ABCD")
_INBOUND = frozenset({"inbound", "inbound_track"})


class JsonFrames:
    """Parsing of the common frames; a carrier adds ``_start`` and its outbound frames."""

    __slots__ = ()
    ignored_events: frozenset[str] = frozenset({"connected"})

    def parse(self, text: str | bytes) -> MediaEvent:
        """Translate one frame; raises :class:`MalformedFrame`."""
        try:
            msg = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise MalformedFrame("not JSON") from None
        if not isinstance(msg, dict):
            raise MalformedFrame("not a JSON object")
        event = msg.get("event")
        if event == "media":  # the hot path: checked first
            media = field_obj(msg, "media")
            if media.get("track", "inbound") not in _INBOUND:
                return Ignored("outbound track")
            return AudioIn(b64_payload(media.get("payload")))
        if event == "start":
            try:
                return self._start(msg)
            except UnservableStart:
                raise
            except MalformedFrame as exc:
                raise UnservableStart(f"start: {exc}") from None
        if event == "dtmf":
            digit = field_obj(msg, "dtmf").get("digit")
            if not isinstance(digit, str) or digit not in DTMF_DIGITS:
                raise MalformedFrame("dtmf.digit: not a DTMF digit")
            return DtmfIn(digit)
        if event == "mark":
            name = field_obj(msg, "mark").get("name")
            if not isinstance(name, str):
                raise MalformedFrame("mark.name: expected a string")
            return MarkPlayed(name)
        if event == "stop":
            return StreamStopped()
        if event in self.ignored_events:
            return Ignored(str(event))
        raise MalformedFrame(f"unknown event {str(event)[:40]!r}")

    def _start(self, msg: dict[str, Any]) -> StreamStarted:
        raise NotImplementedError


def field_obj(msg: dict[str, Any], key: str) -> dict[str, Any]:
    """``msg[key]``, which must be an object."""
    value = msg.get(key)
    if not isinstance(value, dict):
        raise MalformedFrame(f"{key}: expected an object")
    return value


def b64_payload(value: Any) -> bytes:
    """Decoded ``media.payload``."""
    if not isinstance(value, str):
        raise MalformedFrame("media.payload: expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedFrame("media.payload: not base64") from None


def str_params(value: Any, where: str) -> dict[str, str]:
    """A parameters object as ``str → str``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedFrame(f"{where}: expected an object")
    return {str(k): str(v) for k, v in value.items()}
