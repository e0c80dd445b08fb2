"""What the streaming HTTP LLM providers (OpenAI-compatible, Anthropic) share: their settings
from the config, one keep-alive client session per provider, opening a turn's stream and
reading it under its limits (first token, inter-token timeout, byte cap)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp

from ..errors import BackendError
from .base import LLM
from .sse import SSEEvent, SSEStream, SSETimeout, SSETooLong, new_session, post_stream

if TYPE_CHECKING:
    from ...config.model import BackendConfig

FIRST_TIMEOUT = 8.0     # connect + first token, when the config sets no timeout
TOKEN_TIMEOUT = 5.0     # longest wait between two tokens, when the config sets no
                        # inter_token_timeout (a stall the caller hears as silence mid-answer)


class HttpStreamingLLM(LLM):
    """A provider that POSTs each turn and reads the answer as Server-Sent Events."""

    def __init__(self, cfg: BackendConfig, *, default_base_url: str, default_model: str,
                 path: str) -> None:
        self.api_key = cfg.api_key
        self.model = cfg.model or default_model
        self.base_url = (cfg.base_url or default_base_url).rstrip("/")
        self.url = f"{self.base_url}{path}"
        self.first_timeout = cfg.timeout or FIRST_TIMEOUT
        self.token_timeout = cfg.inter_token_timeout or TOKEN_TIMEOUT
        self.max_reply_chars = cfg.max_reply_chars
        self.temperature: float | None = cfg.options.get("temperature")
        self._headers: dict[str, str] = {"Content-Type": "application/json",
                                         "Accept": "text/event-stream"}
        self._session: aiohttp.ClientSession | None = None

    async def open_stream(self, body: bytes) -> tuple[aiohttp.ClientResponse, SSEStream]:
        """POST ``body`` and return the response with its event reader; the first token is
        due within ``first_timeout`` of now (connecting included), each later one within
        ``token_timeout`` of waiting."""
        deadline = asyncio.get_running_loop().time() + self.first_timeout
        if self._session is None:
            self._session = new_session()
        resp = await post_stream(self._session, self.url, body=body, headers=self._headers,
                                 deadline=deadline, provider=self.name, secret=self.api_key)
        return resp, SSEStream(resp.content, deadline=deadline, token_timeout=self.token_timeout,
                               first_timeout=self.first_timeout)

    async def read_events(self, stream: SSEStream) -> list[SSEEvent] | None:
        """The next events of the stream (None at its end); a timeout, an endless body or a
        broken connection is a retryable :class:`BackendError` (the next provider may answer)."""
        try:
            return await stream.read()
        except (SSETimeout, SSETooLong) as exc:
            raise BackendError("llm", self.name, str(exc), retryable=True) from None
        except aiohttp.ClientError as exc:
            raise BackendError("llm", self.name, f"stream broken: {exc}",
                               retryable=True) from None

    def malformed(self, what: str, event: SSEEvent) -> BackendError:
        """The error for an event that is not what the API sends (garbage from a proxy, a
        server speaking another protocol): the answer cannot be trusted, the next provider
        is tried. The event's content is not quoted: it may hold what the caller said."""
        return BackendError("llm", self.name, f"malformed stream: {what} (event "
                            f"{event.event[:40]!r}, {len(event.data)} characters)",
                            retryable=True)

    async def close(self) -> None:
        """Close the HTTP session. Idempotent."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


__all__ = ["FIRST_TIMEOUT", "HttpStreamingLLM", "TOKEN_TIMEOUT"]
