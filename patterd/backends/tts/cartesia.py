"""Cartesia text-to-speech: the WebSocket (default, :mod:`.cartesia_ws`) or HTTP
(``POST {base_url}/tts/bytes``), streamed.

Cartesia writes raw 8 kHz μ-law/A-law/s16le itself (``container: "raw"``), so G.711 goes to
the carrier untouched. Every request names the API version (``Cartesia-Version``, default
``2026-08-14``, what the current official SDK sends) and carries ``Authorization: Bearer``.
From that version on the voice is given as its id (a string); for older versions as
``{"mode": "id", "id": …}``. Errors are JSON from version 2026-03-01 on and may be plain
``Title: Message`` text before.

``transport: websocket`` (default): sentences are sent as the LLM writes them, as contexts of
a socket kept open and shared by the calls of the process; when it fails, the failover chain
speaks the sentence over HTTP. ``transport: http``: one POST per complete sentence.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .base import PCM16, SAMPLE_RATE, LiveSpeech, SpeechStream
from .cartesia_ws import CartesiaConnection, CartesiaContext
from .http_stream import CloudTTS, EmptySpeechStream, HttpSpeechStream

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

DEFAULT_MODEL = "sonic-2"
DEFAULT_VOICE = "694f9389-aac1-45b6-b726-9d9369183238"
DEFAULT_VERSION = "2026-08-14"
VOICE_ID_STRING_FROM = "2026-08-14"
"""The first API version whose requests carry the voice as its id string."""
DEFAULT_LANGUAGE = "en"
ENCODINGS = {PCM16: "pcm_s16le", "PCMU": "pcm_mulaw", "PCMA": "pcm_alaw"}


class CartesiaTTS(CloudTTS):
    """Cartesia Sonic: ``model`` (default ``sonic-2``), ``voice`` (a voice id), options
    ``language`` (default ``en``), ``version`` (the ``Cartesia-Version``, default
    ``2026-08-14``), ``transport`` (``websocket``, the default, or ``http``) and
    ``max_buffer_delay_ms`` (the socket's own buffering of streamed text; Cartesia's default
    when unset); ``Authorization: Bearer <key>``."""

    name = "cartesia"
    output_encodings = frozenset(ENCODINGS)

    def __init__(self, cfg: BackendConfig, agent: AgentConfig | None = None) -> None:
        super().__init__(cfg, agent)
        self.model = cfg.model or DEFAULT_MODEL
        self.voice = cfg.voice or DEFAULT_VOICE
        self.language = str(cfg.options.get("language") or DEFAULT_LANGUAGE)
        self.version = str(cfg.options.get("version") or DEFAULT_VERSION)
        self.transport = str(cfg.options.get("transport") or "websocket").lower()
        if self.transport not in ("http", "websocket"):
            raise ValueError(f"tts provider 'cartesia': transport must be http or websocket, "
                             f"got {self.transport!r}")
        self.max_buffer_delay_ms = cfg.options.get("max_buffer_delay_ms")
        self._headers = {"Cartesia-Version": self.version}
        if cfg.api_key:
            self._headers["Authorization"] = f"Bearer {cfg.api_key}"
        base = self.base_url
        self.ws_base = ("wss://" + base[8:] if base.startswith("https://") else
                        "ws://" + base[7:] if base.startswith("http://") else base)
        self._connections: list[CartesiaConnection] = []

    @property
    def streams_text(self) -> bool:  # type: ignore[override]
        """Over the WebSocket, a sentence is sent as it is written."""
        return self.transport == "websocket"

    def voice_spec(self) -> Any:
        """The ``voice`` of a request, in the form of the configured API version."""
        if self.version >= VOICE_ID_STRING_FROM:
            return self.voice
        return {"mode": "id", "id": self.voice}

    def generation(self, encoding: str) -> dict[str, Any]:
        """What every generation request carries besides its text."""
        out: dict[str, Any] = {
            "model_id": self.model, "voice": self.voice_spec(), "language": self.language,
            "output_format": {"container": "raw", "encoding": ENCODINGS[encoding],
                              "sample_rate": SAMPLE_RATE}}
        if self.max_buffer_delay_ms is not None:
            out["max_buffer_delay_ms"] = int(self.max_buffer_delay_ms)
        return out

    def synthesize(self, text: str, encoding: str = PCM16) -> SpeechStream:
        """Speak ``text`` as raw 8 kHz audio in ``encoding`` (over HTTP: a whole sentence
        gains nothing from the socket but risk)."""
        self.check_encoding(encoding)
        if not text.strip():
            return EmptySpeechStream()
        body = {**self.generation(encoding), "transcript": text}
        body.pop("max_buffer_delay_ms", None)
        return HttpSpeechStream(self, f"{self.base_url}/tts/bytes", json=body,
                                encoding=encoding, headers=self._headers)

    def synthesize_live(self, encoding: str = PCM16) -> LiveSpeech:
        """A sentence fed as it is written: a context on a shared socket."""
        self.check_encoding(encoding)
        if self.transport != "websocket":
            return super().synthesize_live(encoding)
        conn = next((c for c in self._connections if c.usable), None)
        if conn is None:
            conn = CartesiaConnection(self)
            self._connections.append(conn)
        return CartesiaContext(self, conn, encoding)

    def forget(self, conn: CartesiaConnection) -> None:
        """``conn`` failed or closed: new sentences go to another socket."""
        if conn in self._connections:
            self._connections.remove(conn)

    async def close(self) -> None:
        """Close the sockets, then the HTTP session."""
        conns, self._connections = self._connections, []
        for conn in conns:
            await conn.close()
        await super().close()

    def parse_error(self, status: int, body: bytes) -> str:
        """``{"error_code", "title", "message", "request_id"}`` (or plain text)."""
        try:
            err = json.loads(body)
            message = str(err.get("message") or err.get("title") or err.get("error") or "")
            if message:
                title, code = err.get("title"), err.get("error_code")
                if title and title != message:
                    message = f"{title}: {message}"
                return f"{message} ({code})" if code else message
        except (ValueError, TypeError, AttributeError):
            pass
        return super().parse_error(status, body)


__all__ = ["CartesiaTTS"]
