"""The ``webhook`` agent: each caller turn goes to the user's own HTTP endpoint, which decides
what to say and do.

Request (``POST options.url``, JSON, signed with ``X-Patterd-Signature`` — see
:mod:`.signing`)::

    {"call": {"call_id": ..., "from": ..., "to": ..., "direction": ..., "carrier": ...},
     "text": "what the caller said", "dtmf": "digits pressed",
     "history": [{"role": "user" | "assistant" | "tool", "content": ...}, ...]}

The system prompt is not sent (the endpoint is the agent). Answer:

- ``application/json`` ``{"reply": "text to speak", "actions": [{"transfer": "billing"},
  {"hangup": true}, {"send_dtmf": "12#"}]}`` (both keys optional);
- ``text/plain``: the reply itself;
- ``204 No Content``: nothing to say.

An HTTP error, a malformed answer (any other content type — an HTML error page from a proxy is
not a reply) or a timeout raises :class:`BackendError` (retryable for 5xx, 429, timeouts and
connection errors). Redirects are not followed. A reply longer than ``max_reply_chars`` is cut
by the failover chain like any provider's.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping, Sequence

import aiohttp

from ...ops.logging import get_logger
from ..errors import BackendError
from .base import (END_CALL, LLM, SEND_DTMF, TRANSFER_CALL, LLMEvent, Message, TextChunk,
                   ToolCall, ToolSpec)
from .signing import SIGNATURE_HEADER, sign
from .tools import decode_body, read_capped

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

log = get_logger("patterd.llm.webhook")

DEFAULT_TIMEOUT = 10.0
MAX_RESPONSE_BYTES = 64 * 1024
_ERROR_EXCERPT = 300


class WebhookLLM(LLM):
    """Hands every caller turn to the user's endpoint and speaks its reply."""

    name = "webhook"

    def __init__(self, cfg: "BackendConfig", agent: "AgentConfig | None" = None) -> None:
        self.url: str = str(cfg.options.get("url", ""))
        self._secret: str = str(cfg.options.get("secret", ""))
        self.timeout: float = cfg.timeout or DEFAULT_TIMEOUT
        self.max_reply_chars = cfg.max_reply_chars
        self._session: aiohttp.ClientSession | None = None

    def _error(self, message: str, *, status: int | None = None,
               retryable: bool = False) -> BackendError:
        return BackendError("llm", self.name, message, status=status, retryable=retryable)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(trust_env=False)
        return self._session

    async def respond(self, history: Sequence[Message], user_text: str | None = None,
                      dtmf: str | None = None, *, tools: Sequence[ToolSpec] = (),
                      context: Mapping[str, str] | None = None) -> AsyncIterator[LLMEvent]:
        """The endpoint's reply as one :class:`TextChunk`, then a :class:`ToolCall` per action.
        ``tools`` are ignored: the endpoint decides on its own."""
        payload = {"call": dict(context or {}), "text": user_text or "", "dtmf": dtmf or "",
                   "history": [{"role": m.role, "content": m.content}
                               for m in history if m.role != "system"]}
        reply, actions = await self._post(json.dumps(payload).encode())
        if reply:
            yield TextChunk(reply)
        for call in actions:
            yield call

    async def _post(self, body: bytes) -> tuple[str, list[ToolCall]]:
        headers = {"Content-Type": "application/json", "User-Agent": "patterd",
                   "Accept-Encoding": "identity"}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        try:
            async with self._get_session().post(
                    self.url, data=body, headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                if resp.status == 204:
                    return "", []
                if 300 <= resp.status < 400:
                    resp.close()
                    raise self._error("redirect not followed", status=resp.status)
                if resp.status >= 400:
                    excerpt = await resp.content.read(_ERROR_EXCERPT)
                    resp.close()
                    raise self._error(_error_message(decode_body(resp, excerpt), resp.reason),
                                      status=resp.status,
                                      retryable=resp.status >= 500 or resp.status == 429)
                data = await read_capped(resp, MAX_RESPONSE_BYTES)
                if data is None:
                    resp.close()
                    raise self._error(f"response larger than {MAX_RESPONSE_BYTES} bytes",
                                      status=resp.status)
                text = decode_body(resp, data)
                ctype = resp.content_type
                status = resp.status
        except asyncio.TimeoutError:
            raise self._error(f"no answer within {self.timeout:g} s", retryable=True) from None
        except aiohttp.ClientError as exc:
            raise self._error(f"connection failed: {type(exc).__name__}",
                              retryable=True) from None
        if ctype == "application/json" or ctype.endswith("+json"):
            return self._parse_json(text, status)
        if ctype == "text/plain":
            return text.strip(), []
        # text/html and the like are a proxy's or a framework's page, not a reply to speak
        raise self._error(f"unexpected content type {ctype!r} (expected application/json "
                          "or text/plain)", status=status)

    def _parse_json(self, text: str, status: int) -> tuple[str, list[ToolCall]]:
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError:
            raise self._error("bad JSON in the answer", status=status) from None
        if not isinstance(data, dict):
            raise self._error("expected a JSON object {reply, actions}", status=status)
        reply = data.get("reply") or ""
        if not isinstance(reply, str):
            raise self._error("'reply' must be a string", status=status)
        raw_actions = data.get("actions") or []
        if not isinstance(raw_actions, list):
            raise self._error("'actions' must be a list", status=status)
        return reply.strip(), [c for a in raw_actions for c in _actions(a)]

    async def close(self) -> None:
        """Close the HTTP session. Idempotent."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _actions(action: Any) -> list[ToolCall]:
    """The tool calls one ``actions`` entry stands for; unknown or malformed parts are skipped
    (with a warning) so the reply is still spoken."""
    if not isinstance(action, dict):
        log.warning("llm_webhook_action_ignored", reason="not an object")
        return []
    calls: list[ToolCall] = []
    for key, value in action.items():
        if key == "transfer" and isinstance(value, str) and value.strip():
            calls.append(ToolCall(TRANSFER_CALL, {"target": value.strip()}))
        elif key == "hangup" and isinstance(value, bool):
            if value:
                calls.append(ToolCall(END_CALL, {}))
        elif key == "send_dtmf" and isinstance(value, str) and value.strip():
            calls.append(ToolCall(SEND_DTMF, {"digits": value.strip()}))
        elif key in ("transfer", "hangup", "send_dtmf"):
            log.warning("llm_webhook_action_ignored", action=key, reason="bad value")
        else:
            log.warning("llm_webhook_action_ignored", action=str(key)[:40],
                        reason="unknown action")
    return calls


def _error_message(body: str, reason: str | None) -> str:
    """The endpoint's own message: ``error``/``message`` of a JSON body, else its text."""
    text = body.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if isinstance(value, str) and value:
                return value
    return " ".join(text.split())[:200] or (reason or "error")


__all__ = ["DEFAULT_TIMEOUT", "MAX_RESPONSE_BYTES", "WebhookLLM"]
