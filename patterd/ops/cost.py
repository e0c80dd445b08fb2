"""What a call costs: usage counted during the call, priced with the ``pricing`` table.

Carrier minutes follow the carrier's billing increment (whole minutes by default, as Twilio
bills); STT is priced on the caller audio sent to the recogniser, counted in carrier bytes (not
resampled PCM); TTS on characters synthesised (cached replays cost nothing); LLM on the tokens
the provider reports: uncached input at the input rate, prompt-cache reads at the cached rate,
prompt-cache writes at ``cache_write_input_per_million`` (1.25 × the input rate when the table
has none: Anthropic's premium for 5-minute cache writes). A carrier's own reported price
replaces the estimate when it arrives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Mapping

COMPONENTS = ("carrier", "stt", "llm", "tts")
LLM_FIELDS = 4                  # llm_by lists: [input, output, cached, cache_write]
CACHE_WRITE_PREMIUM = 1.25      # Anthropic's 5-minute cache write, × the input rate


@dataclass(slots=True)
class Usage:
    """One call's metered usage so far: totals, and the same split by the provider that did
    the work (a failover chain may use several), each priced at its own rate."""

    stt_seconds: float = 0.0
    tts_chars: int = 0
    llm_input_tokens: int = 0
    llm_output_tokens: int = 0
    llm_cached_tokens: int = 0
    stt_by: dict[str, float] = field(default_factory=dict)       # provider → seconds
    tts_by: dict[str, int] = field(default_factory=dict)         # provider → characters
    # provider → [in, out, cached, cache_write]; a list without the 4th counts as 0 writes
    llm_by: dict[str, list[int]] = field(default_factory=dict)
    llm_cache_write_tokens: int = 0     # part of llm_input_tokens written to a prompt cache

    def add(self, other: "Usage") -> None:
        """Add another stream's usage to this one."""
        self.stt_seconds += other.stt_seconds
        self.tts_chars += other.tts_chars
        self.llm_input_tokens += other.llm_input_tokens
        self.llm_output_tokens += other.llm_output_tokens
        self.llm_cached_tokens += other.llm_cached_tokens
        self.llm_cache_write_tokens += other.llm_cache_write_tokens
        for name, seconds in other.stt_by.items():
            self.stt_by[name] = self.stt_by.get(name, 0.0) + seconds
        for name, chars in other.tts_by.items():
            self.tts_by[name] = self.tts_by.get(name, 0) + chars
        for name, tokens in other.llm_by.items():
            mine = self.llm_by.setdefault(name, [0, 0, 0])
            mine.extend([0] * (len(tokens) - len(mine)))    # grow only when writes came in
            for i, count in enumerate(tokens):
                mine[i] += count


def _split(total: float, by: Mapping[str, Any], default: str) -> dict[str, float]:
    """Usage by provider; whatever no provider claimed goes to ``default`` (the primary)."""
    out = {name: float(v) for name, v in by.items() if v}
    rest = total - sum(out.values())
    if rest > 1e-9:
        out[default] = out.get(default, 0.0) + rest
    return out


def llm_tokens(tokens: Sequence[int]) -> list[int]:
    """An ``llm_by`` entry as ``[input, output, cached, cache_write]`` (older ones have 3)."""
    return [*tokens, *[0] * (LLM_FIELDS - len(tokens))][:LLM_FIELDS]


def _llm_cost(prices: Mapping[str, Any], tokens: Sequence[int]) -> float:
    inputs, outputs, cached, written = llm_tokens(tokens)
    write_rate = prices.get("cache_write_input_per_million")
    if write_rate is None:
        write_rate = prices["input_per_million"] * CACHE_WRITE_PREMIUM
    return (max(0, inputs - cached - written) * prices["input_per_million"]
            + cached * prices["cached_input_per_million"]
            + written * write_rate
            + outputs * prices["output_per_million"]) / 1e6


def breakdown(pricing: Mapping[str, Any], *, carrier: str, direction: str, seconds: float,
              stt: str, llm: str, tts: str, usage: Usage) -> dict[str, Any]:
    """Cost by component in USD, rounded to 1/100 cent, plus the total."""
    c = pricing["carrier"][carrier]
    increment = float(c.get("billing_increment_seconds", 60.0)) or 1.0
    billed = math.ceil(max(0.0, seconds) / increment) * increment if seconds > 0 else 0.0
    per_minute = c["outbound_per_minute" if direction == "outbound" else "inbound_per_minute"]
    def rate(layer: str, name: str, default: str) -> Mapping[str, Any]:
        return pricing[layer].get(name) or pricing[layer][default]

    llm_by = {name: llm_tokens(t) for name, t in usage.llm_by.items()}
    claimed = [sum(t[i] for t in llm_by.values()) for i in range(LLM_FIELDS)]
    rest = [usage.llm_input_tokens - claimed[0], usage.llm_output_tokens - claimed[1],
            usage.llm_cached_tokens - claimed[2], usage.llm_cache_write_tokens - claimed[3]]
    if any(r > 0 for r in rest):
        mine = llm_by.get(llm, [0] * LLM_FIELDS)
        llm_by[llm] = [mine[i] + max(0, rest[i]) for i in range(LLM_FIELDS)]
    parts = {
        "carrier": billed / 60.0 * per_minute,
        "stt": sum(seconds / 60.0 * rate("stt", name, stt)["per_minute"]
                   for name, seconds in _split(usage.stt_seconds, usage.stt_by, stt).items()),
        "llm": sum(_llm_cost(rate("llm", name, llm), tokens)
                   for name, tokens in llm_by.items()),
        "tts": sum(chars / 1000.0 * rate("tts", name, tts)["per_thousand_chars"]
                   for name, chars in _split(usage.tts_chars, usage.tts_by, tts).items()),
    }
    out: dict[str, Any] = {k: round(v, 6) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()), 6)
    out["currency"] = "USD"
    out["carrier_source"] = "estimate"
    out["billed_seconds"] = billed
    return out


def apply_carrier_price(cost: dict[str, Any], price: float) -> dict[str, Any]:
    """The carrier's reported price (Telnyx ``call.cost``, Twilio ``price``) in place of the
    estimate; Twilio reports it negative."""
    cost = dict(cost)
    cost["carrier"] = round(abs(price), 6)
    cost["carrier_source"] = "carrier"
    cost["total"] = round(sum(cost[k] for k in COMPONENTS), 6)
    return cost
