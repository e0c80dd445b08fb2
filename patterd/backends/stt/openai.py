"""OpenAI speech-to-text: one ``POST /audio/transcriptions`` per utterance.

The API is batch only, so the call session's own VAD cuts the utterances: a stream collects
the caller's 8 kHz PCM16 (the last :data:`MAX_UTTERANCE_SECONDS` of it) and
:meth:`OpenAIStream.finalize` sends it as a WAV file. Only final transcripts come out.
Works with any OpenAI-compatible server that has the endpoint (``base_url``).
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
from typing import TYPE_CHECKING, Any

import aiohttp

from ..errors import BackendError
from .base import PCM16, SAMPLE_RATE, STT, UtteranceStream

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini-transcribe"
DEFAULT_TIMEOUT = 5.0             # s for the whole request (cfg.timeout overrides)
MAX_UTTERANCE_SECONDS = 30.0      # older audio of a longer utterance is dropped
MIN_UTTERANCE_SECONDS = 0.1       # the API refuses shorter files (audio_too_short)


def wav_pcm16(pcm: bytes, rate: int = SAMPLE_RATE) -> bytes:
    """``pcm`` (s16le mono) wrapped in a 44-byte RIFF/WAVE header."""
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16,
                         1, 1, rate, rate * 2, 2, 16, b"data", len(pcm))
    return header + pcm


def iso639_1(language: str) -> str:
    """``"en-US"`` → ``"en"``; ``""`` when the tag does not start with a two-letter code
    (the API then detects the language itself)."""
    m = re.match(r"([A-Za-z]{2})(?:[-_]|$)", language.strip())
    return m.group(1).lower() if m else ""


class OpenAISTT(STT):
    """OpenAI (or compatible) transcription. Option: ``language`` (default: the agent's).

    ``cfg.model`` defaults to ``gpt-4o-mini-transcribe``.
    """

    name = "openai"
    input_encodings = frozenset({PCM16})

    def __init__(self, cfg: "BackendConfig", agent: "AgentConfig | None" = None,
                 llm: "BackendConfig | None" = None) -> None:
        self.url = f"{(cfg.base_url or DEFAULT_BASE_URL).rstrip('/')}/audio/transcriptions"
        self.model = cfg.model or DEFAULT_MODEL
        self.language = iso639_1(str(cfg.options.get("language")
                                     or (agent.language if agent else "") or ""))
        self.timeout = cfg.timeout or DEFAULT_TIMEOUT
        self._key = cfg.api_key
        self._headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the HTTP session (nothing is sent until the first utterance)."""
        self.session()

    def session(self) -> aiohttp.ClientSession:
        """The provider's one HTTP session (created on first use)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0))
        return self._session

    def _error(self, message: str, status: int | None = None,
               retryable: bool = True) -> BackendError:
        if self._key:
            message = message.replace(self._key, "***")
        return BackendError("stt", self.name, message, status=status, retryable=retryable)

    async def transcribe(self, pcm: bytes) -> str:
        """The text of one utterance (s16le mono 8 kHz)."""
        form = aiohttp.FormData()
        form.add_field("file", wav_pcm16(pcm), filename="utterance.wav",
                       content_type="audio/wav")
        form.add_field("model", self.model)
        if self.language:
            form.add_field("language", self.language)
        form.add_field("response_format", "json")
        try:
            async with self.session().post(
                    self.url, data=form, headers=self._headers,
                    timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise self._error(_reason(body, resp.status), resp.status,
                                      retryable=resp.status in (408, 409, 429)
                                      or resp.status >= 500)
        except asyncio.TimeoutError:
            raise self._error(f"no answer within {self.timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._error(f"request failed: {exc.__class__.__name__}: {exc}") from None
        try:
            data = json.loads(body)
            return str(data["text"]).strip()
        except (ValueError, KeyError, TypeError):
            raise self._error(f"unexpected answer: {body[:200]!r}", 200) from None

    def open_stream(self, encoding: str = PCM16) -> "OpenAIStream":
        """A recogniser for one call (PCM16 only)."""
        if encoding != PCM16:
            raise ValueError(f"openai: unsupported input encoding {encoding!r}")
        return OpenAIStream(self)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def _reason(body: bytes, status: int) -> str:
    """``error.message`` of an OpenAI error body, or the start of whatever came."""
    try:
        err: Any = json.loads(body)["error"]
        message = err.get("message") if isinstance(err, dict) else err
        if message:
            return str(message)
    except (ValueError, KeyError, TypeError):
        pass
    return body[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"


class OpenAIStream(UtteranceStream):
    """One call's utterance buffer; each :meth:`finalize` transcribes it in one request
    (when it fails the audio is gone from this stream; the failover wrapper keeps a copy)."""

    def __init__(self, provider: OpenAISTT) -> None:
        super().__init__(max_seconds=MAX_UTTERANCE_SECONDS)
        self._provider = provider

    async def recognise(self, audio: bytes) -> str:
        """Transcribe the utterance; too little audio is "" without a request."""
        if len(audio) < MIN_UTTERANCE_SECONDS * SAMPLE_RATE * 2:
            return ""
        return await self._provider.transcribe(audio)


__all__ = ["OpenAISTT", "OpenAIStream", "iso639_1", "wav_pcm16"]
