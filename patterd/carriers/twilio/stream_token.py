"""Twilio media-stream tokens: one ``<Parameter name="stream_token">`` per ``<Stream>``,
keyed from the auth token (see :mod:`patterd.carriers.stream_token`). Twilio echoes it in
the ``start`` frame's ``customParameters``."""

from __future__ import annotations

from ..stream_token import OUTBOUND_REF, STREAM_TTL, Grant
from ..stream_token import StreamTokens as _Tokens

TOKEN_PARAM = "stream_token"

__all__ = ["Grant", "OUTBOUND_REF", "STREAM_TTL", "StreamTokens", "TOKEN_PARAM"]


class StreamTokens(_Tokens):
    """The Twilio carrier's tokens."""

    __slots__ = ()

    def __init__(self, auth_token: str) -> None:
        super().__init__(auth_token, b"patterd/twilio-media-token/v1")
