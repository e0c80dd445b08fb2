"""Deepgram live speech-to-text over one WebSocket per call (``wss://…/v1/listen``).

The carrier's G.711 goes to Deepgram as it came (``encoding=mulaw|alaw``, ``sample_rate=8000``):
no decoding, no resampling. Each stream connects in the background when the call opens it; audio
pushed before the socket is open waits in a bounded buffer.

This module holds the provider, :class:`DeepgramSTT`. One call's socket (batching, keep-alives,
``Finalize``/``CloseStream``) is :class:`~.deepgram_stream.DeepgramStream`; the wire vocabulary,
the URL query and the folding of results into turns are in :mod:`.deepgram_protocol`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from .base import PCM16, STT
# CLOSE_STREAM, FINALIZE, KEEPALIVE, MAX_*: defined here before the split, still importable.
from .deepgram_protocol import (CLOSE_STREAM, ENCODINGS, FINALIZE,  # noqa: F401
                                KEEPALIVE, PROVIDER_NAME, listen_url)
from .deepgram_stream import MAX_EVENTS, MAX_QUEUED_SECONDS, DeepgramStream  # noqa: F401

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

DEFAULT_BASE_URL = "wss://api.deepgram.com/v1"
DEFAULT_MODEL = "nova-3"
DEFAULT_TIMEOUT = 5.0             # seconds to open the socket (cfg.timeout overrides)


class DeepgramSTT(STT):
    """Deepgram streaming STT. Options: ``language`` (default: the agent's), ``endpointing``
    (ms of silence for ``speech_final``, default 300), ``utterance_end_ms`` (default 1000).

    ``keepalive_interval``/``finalize_timeout`` override the class defaults of
    :class:`DeepgramStream` for the streams of this provider (tests use short ones).
    """

    name = PROVIDER_NAME
    input_encodings = frozenset(ENCODINGS)

    def __init__(self, cfg: "BackendConfig", agent: "AgentConfig | None" = None,
                 llm: "BackendConfig | None" = None, *, keepalive_interval: float | None = None,
                 finalize_timeout: float | None = None) -> None:
        opts = cfg.options
        self.base_url = (cfg.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.timeout = cfg.timeout or DEFAULT_TIMEOUT
        self.endpointing = int(opts.get("endpointing") or 300)
        self.params = {
            "model": cfg.model or DEFAULT_MODEL, "channels": "1", "interim_results": "true",
            "endpointing": str(self.endpointing),
            "utterance_end_ms": str(int(opts.get("utterance_end_ms") or 1000)),
            "vad_events": "true", "smart_format": "true",
            "language": str(opts.get("language") or (agent.language if agent else "") or "en"),
        }
        self._headers = {"Authorization": f"Token {cfg.api_key}"} if cfg.api_key else {}
        self.keepalive_interval = keepalive_interval or DeepgramStream.keepalive_interval
        self.finalize_timeout = finalize_timeout or DeepgramStream.finalize_timeout
        self._session: aiohttp.ClientSession | None = None
        self._streams: set[DeepgramStream] = set()

    def url(self, encoding: str) -> URL:
        """The ``/listen`` URL for a stream fed ``encoding``."""
        return listen_url(self.base_url, self.params, encoding)

    async def start(self) -> None:
        """Create the HTTP session; nothing is connected until a call opens a stream."""
        self.session()

    def session(self) -> aiohttp.ClientSession:
        """The provider's one HTTP session (created on first use)."""
        if self._session is None or self._session.closed:
            # No connection limit: each call holds one socket for its whole length.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout))
        return self._session

    def open_stream(self, encoding: str = PCM16) -> DeepgramStream:
        """A recogniser for one call; its socket opens in the background."""
        if encoding not in ENCODINGS:
            raise ValueError(f"deepgram: unsupported input encoding {encoding!r}")
        stream = DeepgramStream(self, encoding)
        self._streams.add(stream)
        return stream

    async def close(self) -> None:
        """Close every open stream, then the HTTP session."""
        await asyncio.gather(*(s.close() for s in list(self._streams)), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


__all__ = ["DeepgramSTT", "DeepgramStream"]
