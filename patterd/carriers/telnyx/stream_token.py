"""Telnyx media-stream tokens: carried in the path of the per-call ``stream_url``
(``/media/telnyx/<token>``), keyed from the API key (see :mod:`patterd.carriers.stream_token`)."""

from __future__ import annotations

from ..stream_token import OUTBOUND_REF, STREAM_TTL, Grant
from ..stream_token import StreamTokens as _Tokens

__all__ = ["Grant", "OUTBOUND_REF", "STREAM_TTL", "StreamTokens"]


class StreamTokens(_Tokens):
    """The Telnyx carrier's tokens."""

    __slots__ = ()

    def __init__(self, api_key: str) -> None:
        super().__init__(api_key, b"patterd/telnyx-media-token/v2")
