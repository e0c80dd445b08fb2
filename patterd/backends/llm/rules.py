"""The offline ``rules`` agent (docs/configuration.md, ``llm`` provider ``rules``).

Rules are tried in order; the first whose phrase occurs in the caller's utterance
(case-insensitive, as whole words: ``bye`` matches "ok bye!" but not "maybe") or whose ``dtmf``
equals the digits pressed wins. Its reply is spoken (``{name}`` placeholders filled from the
call's variables — ``agent.variables`` with the per-call ones of ``POST /v1/calls`` over them,
passed in the context as ``var_<name>`` — unknown ones left as they are) and its action becomes
a tool call. Nothing matched: the ``fallback`` reply (filled the same way), no action.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Mapping, Sequence

from .base import (END_CALL, LLM, SEND_DTMF, TRANSFER_CALL, LLMEvent, Message, TextChunk,
                   ToolCall, ToolSpec)

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig, Rule, RuleAction

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
# Any braced name without braces inside: agent.variables names are not restricted to
# identifiers, and only names present in the mapping are replaced anyway.
_PLACEHOLDER = re.compile(r"\{([^{}\n]+)\}")
DEFAULT_FALLBACK = "Sorry, I didn't catch that."
VARIABLE_PREFIX = "var_"
"""Context keys carrying the call's variables (``var_name`` → ``{name}``), as in the stream."""


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``: letters and digits, apostrophes kept inside words
    ("didn't"), every other character a separator."""
    return [w.replace("’", "'") for w in _WORD.findall(text.casefold())]


def fill(template: str, variables: Mapping[str, str]) -> str:
    """``template`` with each ``{name}`` replaced by ``variables[name]`` in one pass (a value
    containing braces is not filled again); unknown placeholders and other braces stay."""
    if not variables or "{" not in template:
        return template
    return _PLACEHOLDER.sub(lambda m: str(variables.get(m[1], m[0])), template)


def context_variables(context: Mapping[str, str] | None) -> dict[str, str]:
    """The variables carried in an LLM context (``var_name`` keys), by name."""
    n = len(VARIABLE_PREFIX)
    return {k[n:]: v for k, v in (context or {}).items() if k.startswith(VARIABLE_PREFIX)}


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    if n == 0:
        return False
    return any(list(haystack[i:i + n]) == list(needle) for i in range(len(haystack) - n + 1))


@dataclass(frozen=True, slots=True)
class Match:
    """The outcome of one turn: the rule that won (None → fallback) and what to say and do."""

    rule: "Rule | None"
    reply: str
    tool: ToolCall | None


def action_tool(action: "RuleAction | None") -> ToolCall | None:
    """The tool call a rule's action stands for."""
    if action is None:
        return None
    if action.kind == "transfer":
        return ToolCall(TRANSFER_CALL, {"target": action.value})
    if action.kind == "hangup":
        return ToolCall(END_CALL, {})
    if action.kind == "send_dtmf":
        return ToolCall(SEND_DTMF, {"digits": action.value})
    raise ValueError(f"unknown rule action {action.kind!r}")


class RulesLLM(LLM):
    """The offline rules agent."""

    name = "rules"

    def __init__(self, cfg: "BackendConfig", agent: "AgentConfig | None" = None) -> None:
        self.rules = tuple(cfg.rules)
        self.fallback = cfg.fallback or DEFAULT_FALLBACK
        self.variables: Mapping[str, str] = dict(agent.variables) if agent else {}
        self._phrases = [[words(p) for p in r.phrases] for r in self.rules]

    def match(self, user_text: str | None = None, dtmf: str | None = None,
              variables: Mapping[str, str] | None = None) -> Match:
        """Pick the winning rule for an utterance and/or DTMF digits (pure, synchronous).

        ``variables``: the call's own, over ``agent.variables``, for the reply's placeholders."""
        said = words(user_text or "")
        digits = (dtmf or "").strip().upper()
        values = {**self.variables, **variables} if variables else self.variables
        for rule, phrases in zip(self.rules, self._phrases):
            by_dtmf = bool(digits) and bool(rule.dtmf) and rule.dtmf.upper() == digits
            if by_dtmf or any(_contains(said, p) for p in phrases):
                return Match(rule, fill(rule.reply, values), action_tool(rule.action))
        return Match(None, fill(self.fallback, values), None)

    async def respond(self, history: Sequence[Message], user_text: str | None = None,
                      dtmf: str | None = None, *, tools: Sequence[ToolSpec] = (),
                      context: Mapping[str, str] | None = None) -> AsyncIterator[LLMEvent]:
        """The winning rule's reply (if any) as one :class:`TextChunk`, then its action; the
        reply's placeholders are filled from the ``var_…`` entries of ``context`` (the call's
        variables) over ``agent.variables``."""
        m = self.match(user_text, dtmf, context_variables(context))
        if m.reply:
            yield TextChunk(m.reply)
        if m.tool is not None:
            yield m.tool

    def vocabulary(self) -> list[str]:
        """Every phrase of every rule (lower-cased), for the offline STT."""
        return [" ".join(p) for phrases in self._phrases for p in phrases if p]


__all__ = ["VARIABLE_PREFIX", "Match", "RulesLLM", "action_tool", "context_variables", "fill",
           "words"]
