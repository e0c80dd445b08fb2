"""The built-in price table (USD) and how ``pricing:`` overrides it.

Units: carrier and STT per minute, LLM per million tokens, TTS per thousand characters. The
figures are list prices as published by each vendor (see ``reference/providers.md`` §9); users
with negotiated rates override them in ``pricing:`` with the same keys. An LLM without
``cache_write_input_per_million`` has prompt-cache writes priced at 1.25 × its input rate.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

DEFAULT_PRICES: Mapping[str, Any] = MappingProxyType({
    "carrier": {
        # Twilio bills started minutes; Telnyx's increment is not confirmed here (⚠️): override.
        "twilio": {"inbound_per_minute": 0.0085, "outbound_per_minute": 0.014,
                   "billing_increment_seconds": 60.0},
        "telnyx": {"inbound_per_minute": 0.0035, "outbound_per_minute": 0.007,
                   "billing_increment_seconds": 60.0},
        # a test call from the console (the browser's microphone): no carrier, no bill
        "browser": {"inbound_per_minute": 0.0, "outbound_per_minute": 0.0,
                    "billing_increment_seconds": 1.0},
    },
    "stt": {
        "pocketsphinx": {"per_minute": 0.0},
        "deepgram": {"per_minute": 0.0048},
        "openai": {"per_minute": 0.006},
    },
    "llm": {
        "rules": {"input_per_million": 0.0, "output_per_million": 0.0,
                  "cached_input_per_million": 0.0},
        "openai": {"input_per_million": 0.15, "output_per_million": 0.60,
                   "cached_input_per_million": 0.075},
        # claude-haiku-4-5, the provider's default model (⚠️ list price, override as needed;
        # for another model override every rate: a cache write is 1.25 ×, a read 0.1 × input)
        "anthropic": {"input_per_million": 1.0, "output_per_million": 5.0,
                      "cached_input_per_million": 0.10, "cache_write_input_per_million": 1.25},
        "webhook": {"input_per_million": 0.0, "output_per_million": 0.0,
                    "cached_input_per_million": 0.0},
    },
    "tts": {
        "espeak": {"per_thousand_chars": 0.0},
        "elevenlabs": {"per_thousand_chars": 0.05},
        "openai": {"per_thousand_chars": 0.015},
        "deepgram": {"per_thousand_chars": 0.030},
        "cartesia": {"per_thousand_chars": 0.038},
    },
})


def merge_pricing(overrides: Any, path: str, problems: list[str]) -> dict[str, Any]:
    """The default table with ``overrides`` applied; unknown keys and bad values are problems."""
    return _merge(DEFAULT_PRICES, overrides, path, problems)


def _merge(base: Mapping[str, Any], over: Any, path: str, problems: list[str]) -> dict[str, Any]:
    out = {k: (_merge(v, None, "", problems) if isinstance(v, Mapping) else v)
           for k, v in base.items()}
    if over is None:
        return out
    if not isinstance(over, dict):
        problems.append(f"{path}: expected a mapping with keys {', '.join(base)}")
        return out
    for key, value in over.items():
        sub = f"{path}.{key}"
        if key not in base:
            import difflib
            close = difflib.get_close_matches(str(key), list(base), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{sub}: unknown key{hint}; expected one of {', '.join(base)}")
        elif isinstance(base[key], Mapping):
            out[key] = _merge(base[key], value, sub, problems)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            problems.append(f"{sub}: expected a price in USD (a number ≥ 0), got {value!r}")
        else:
            out[key] = float(value)
    return out
