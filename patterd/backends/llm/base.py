"""The language-model (agent brain) interface every LLM provider implements.

``respond`` streams :class:`TextChunk` (what the agent says, in order) and :class:`ToolCall` (what
it does). Tool names and arguments:

- ``transfer_call`` ``{"target": NAME_OR_E164_OR_SIP}`` — a name is a key of
  ``agent.transfer_targets``, resolved by the call's action layer;
- ``end_call`` ``{}`` — hang up once the reply has been spoken;
- ``send_dtmf`` ``{"digits": "123#"}``.
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
class Message:
    """One turn of the conversation history."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str


@dataclass(frozen=True, slots=True)
class TextChunk:
    """A piece of the agent's reply, to be spoken."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """An action the agent takes."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


LLMEvent = TextChunk | ToolCall


class LLM(abc.ABC):
    """A language-model provider, shared by every call of the daemon."""

    @abc.abstractmethod
    def respond(self, history: Sequence[Message], user_text: str | None = None,
                dtmf: str | None = None) -> AsyncIterator[LLMEvent]:
        """Stream the agent's answer to the caller's utterance and/or the DTMF digits pressed.

        ``history`` is the conversation so far (not including ``user_text``).
        """

    async def close(self) -> None:
        """Release the provider's resources. Idempotent."""


__all__ = ["END_CALL", "LLM", "LLMEvent", "Message", "SEND_DTMF", "TOOL_NAMES", "TRANSFER_CALL",
           "TextChunk", "ToolCall"]
