"""The language-model (agent brain) interface every LLM provider implements.

``respond`` streams :class:`TextChunk` (what the agent says, in order) and :class:`ToolCall` (what
it does). Tool names and arguments:

- ``transfer_call`` ``{"target": NAME_OR_E164_OR_SIP}`` — a name is a key of
  ``agent.transfer_targets``, resolved by the call's action layer;
- ``end_call`` ``{}`` — hang up once the reply has been spoken;
- ``send_dtmf`` ``{"digits": "123#"}``.

Providers that report token usage also yield one :class:`TokenUsage` per request. Cloud
providers are offered ``tools`` (:class:`ToolSpec`, the built-in ones plus the user's) and
yield a :class:`ToolCall` (with the provider's ``id``) for each call the model makes; running
user tools and feeding results back is :mod:`.agent`'s job, not the provider's.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal, Mapping, Sequence

TRANSFER_CALL = "transfer_call"
END_CALL = "end_call"
SEND_DTMF = "send_dtmf"
TOOL_NAMES = (TRANSFER_CALL, END_CALL, SEND_DTMF)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """An action the agent takes. ``id`` is the provider's id of the call (empty for rules)."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    """One entry of the conversation history.

    An ``assistant`` message may carry the ``tool_calls`` the model made (with or without
    text); a ``tool`` message is the result of the call ``tool_call_id`` (named ``name``).
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class TextChunk:
    """A piece of the agent's reply, to be spoken."""

    text: str


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens one request used, as the provider reported them.

    ``input_tokens`` is the whole prompt; ``cached_tokens`` the part of it read from the
    provider's prompt cache, ``cache_write_tokens`` the part written to it (Anthropic bills
    writes above the input rate; providers that cache implicitly leave it 0).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    provider: str = ""          # set by the failover chain: who used them
    cache_write_tokens: int = 0  # last: callers build TokenUsage(in, out, cached, provider)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model: its name, what it does and its arguments (JSON Schema)."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True, slots=True)
class StartOver:
    """The answer begins again (a provider failed midway and the next one answers the same
    request): text not yet spoken and tool calls seen so far are to be dropped."""


@dataclass(frozen=True, slots=True)
class Truncated:
    """The answer was cut at its length cap (``max_reply_chars``): no more text follows, and
    the unfinished sentence is to be dropped rather than spoken."""

    chars: int


LLMEvent = TextChunk | ToolCall | TokenUsage | StartOver | Truncated

BUILTIN_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(TRANSFER_CALL, "Transfer the caller to a person or department. Use a name from "
             "the list of transfer targets, or an E.164 phone number.",
             {"type": "object", "properties": {"target": {
                 "type": "string", "description": "transfer target name or E.164 number"}},
              "required": ["target"]}),
    ToolSpec(END_CALL, "Hang up the call after your reply has been spoken, when the "
             "conversation is over.", {"type": "object", "properties": {}}),
    ToolSpec(SEND_DTMF, "Send touch-tone digits on the call (for example to navigate a phone "
             "menu).", {"type": "object", "properties": {"digits": {
                 "type": "string", "description": "digits 0-9, *, #, A-D; w = 0.5 s pause"}},
                 "required": ["digits"]}),
)


class LLM(abc.ABC):
    """A language-model provider, shared by every call of the daemon."""

    name: str = ""
    """The provider's name (``llm.provider``), for metrics and pricing."""
    max_reply_chars: int = 0
    """The longest answer spoken (``max_reply_chars``; 0: the failover chain's default)."""

    @abc.abstractmethod
    def respond(self, history: Sequence[Message], user_text: str | None = None,
                dtmf: str | None = None, *, tools: Sequence[ToolSpec] = (),
                context: Mapping[str, str] | None = None) -> AsyncIterator[LLMEvent]:
        """Stream the agent's answer to the caller's utterance and/or the DTMF digits pressed.

        ``history`` is the conversation so far: the system prompt first, and — in a tool round
        — ending with the tool results (then ``user_text`` and ``dtmf`` are None). ``tools``
        are the tools the model may call; ``context`` describes the call (``call_id``,
        ``from``, ``to``, ``direction``, ``carrier``) for providers that pass it on.
        Raises :class:`patterd.backends.errors.BackendError` when the provider fails.
        """

    async def close(self) -> None:
        """Release the provider's resources. Idempotent."""


def user_message(user_text: str | None, dtmf: str | None) -> Message | None:
    """The ``user`` message a turn adds to the history (DTMF spelled out for the model)."""
    if user_text:
        return Message("user", user_text if not dtmf else f"{user_text} [pressed {dtmf}]")
    if dtmf:
        return Message("user", f"[The caller pressed {dtmf} on the keypad]")
    return None


__all__ = ["BUILTIN_TOOLS", "END_CALL", "LLM", "LLMEvent", "Message", "SEND_DTMF", "TOOL_NAMES",
           "StartOver", "TRANSFER_CALL", "TextChunk", "TokenUsage", "ToolCall", "ToolSpec",
           "Truncated", "user_message"]
