"""What a call's session knows about the call beyond its audio: the context that rode in the
stream's signed parameters, and the usage metered for its cost."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..backends.llm.base import TokenUsage
from ..backends.llm.rules import VARIABLE_PREFIX
from ..carriers.telnyx.rest import read_client_state
from ..ops.cost import Usage

if TYPE_CHECKING:
    from .turns import Speaker


def stream_context(parameters: dict[str, str]) -> dict[str, str]:
    """The call's context from the stream: Twilio ``<Parameter>``s as they are; Telnyx's
    ``client_state`` (base64 JSON we set on answer/dial) unpacked into the same names."""
    params = dict(parameters)
    state = read_client_state(params.pop("client_state", None))
    for key in ("direction", "to", "from", "amd", "vm"):
        if isinstance(state.get(key), str):
            params.setdefault(key, state[key])
    variables = state.get("vars")
    if isinstance(variables, dict):
        for name, value in variables.items():
            params.setdefault(VARIABLE_PREFIX + str(name), str(value))
    return params


def call_variables(agent_variables: Mapping[str, str],
                   params: Mapping[str, str]) -> dict[str, str]:
    """The call's ``{name}`` values: ``agent.variables`` with the per-call ones (``var_name``
    stream parameters, from ``POST /v1/calls``) over them."""
    n = len(VARIABLE_PREFIX)
    return {**agent_variables,
            **{k[n:]: v for k, v in params.items() if k.startswith(VARIABLE_PREFIX)}}


def llm_context(call_id: str, carrier: str, params: dict[str, str],
                variables: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the LLM (and user tools) may know about the call: who and which way, and its
    variables as ``var_name`` entries (the rules agent fills its replies from them)."""
    context = {"call_id": call_id, "carrier": carrier,
               "direction": params.get("direction", "inbound"), "from": params.get("from", ""),
               "to": params.get("to", "")}
    for name, value in (variables or {}).items():
        context[VARIABLE_PREFIX + name] = value
    return context


class Meter:
    """One media stream's usage, split by the provider that did the work.

    The session counts the audio it sends the recogniser itself (``stt_bytes``, an int on the
    per-frame path); :meth:`credit_stt` hands what was sent since the last time to the
    recogniser in use."""

    __slots__ = ("usage", "_stt_counted")

    def __init__(self) -> None:
        self.usage = Usage()
        self._stt_counted = 0

    def tokens(self, used: TokenUsage, default: str) -> None:
        """Tokens one LLM request reported (``default``: the provider when untagged)."""
        u = self.usage
        u.llm_input_tokens += used.input_tokens
        u.llm_output_tokens += used.output_tokens
        u.llm_cached_tokens += used.cached_tokens
        u.llm_cache_write_tokens += used.cache_write_tokens
        mine = u.llm_by.setdefault(used.provider or default, [0, 0, 0, 0])
        mine[0] += used.input_tokens
        mine[1] += used.output_tokens
        mine[2] += used.cached_tokens
        mine[3] += used.cache_write_tokens

    def credit_stt(self, stt_bytes: int, provider: str) -> None:
        """Credit the audio (s16 8 kHz bytes) sent since the last call to ``provider``."""
        new = stt_bytes - self._stt_counted
        if new > 0:
            by = self.usage.stt_by
            by[provider] = by.get(provider, 0.0) + new / 16000.0
            self.usage.stt_seconds += new / 16000.0
            self._stt_counted = stt_bytes

    def total(self, speaker: "Speaker") -> Usage:
        """The stream's usage, the speaker's synthesis included."""
        u = self.usage
        return Usage(stt_seconds=u.stt_seconds, tts_chars=speaker.tts_chars,
                     llm_input_tokens=u.llm_input_tokens,
                     llm_output_tokens=u.llm_output_tokens,
                     llm_cached_tokens=u.llm_cached_tokens,
                     llm_cache_write_tokens=u.llm_cache_write_tokens, stt_by=dict(u.stt_by),
                     tts_by=dict(speaker.tts_by), llm_by={k: list(v) for k, v in
                                                          u.llm_by.items()})


__all__ = ["Meter", "call_variables", "llm_context", "stream_context"]
