"""What a call costs: usage counted during the call, priced with the ``pricing`` table.

Carrier minutes follow the carrier's billing increment (whole minutes by default, as Twilio
bills); STT is priced on the caller audio sent to the recogniser, counted in carrier bytes (not
resampled PCM); TTS on characters synthesised (cached replays cost nothing); LLM on the tokens
the provider reports. A carrier's own reported price replaces the estimate when it arrives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

COMPONENTS = ("carrier", "stt", "llm", "tts")


@dataclass(slots=True)
class Usage:
    """One call's metered usage so far."""

    stt_seconds: float = 0.0
    tts_chars: int = 0
    llm_input_tokens: int = 0
    llm_output_tokens: int = 0
    llm_cached_tokens: int = 0


def breakdown(pricing: Mapping[str, Any], *, carrier: str, direction: str, seconds: float,
              stt: str, llm: str, tts: str, usage: Usage) -> dict[str, Any]:
    """Cost by component in USD, rounded to 1/100 cent, plus the total."""
    c = pricing["carrier"][carrier]
    increment = float(c.get("billing_increment_seconds", 60.0)) or 1.0
    billed = math.ceil(max(0.0, seconds) / increment) * increment if seconds > 0 else 0.0
    per_minute = c["outbound_per_minute" if direction == "outbound" else "inbound_per_minute"]
    l_price = pricing["llm"][llm]
    uncached = max(0, usage.llm_input_tokens - usage.llm_cached_tokens)
    parts = {
        "carrier": billed / 60.0 * per_minute,
        "stt": usage.stt_seconds / 60.0 * pricing["stt"][stt]["per_minute"],
        "llm": (uncached * l_price["input_per_million"]
                + usage.llm_cached_tokens * l_price["cached_input_per_million"]
                + usage.llm_output_tokens * l_price["output_per_million"]) / 1e6,
        "tts": usage.tts_chars / 1000.0 * pricing["tts"][tts]["per_thousand_chars"],
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
