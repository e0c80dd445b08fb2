"""Cost of a call whose failover chains used several providers: each at its own rate."""

from __future__ import annotations

import pytest

from patterd.ops.cost import Usage, breakdown
from patterd.ops.pricing import DEFAULT_PRICES


def test_each_provider_is_priced_at_its_own_rate_and_unclaimed_usage_at_the_primary() -> None:
    usage = Usage(stt_seconds=120.0, tts_chars=3000, llm_input_tokens=3_000_000,
                  llm_output_tokens=200_000, llm_cached_tokens=1_000_000,
                  stt_by={"deepgram": 60.0, "openai": 30.0},            # 30 s unclaimed
                  tts_by={"elevenlabs": 1000, "deepgram": 2000},
                  llm_by={"anthropic": [1_000_000, 100_000, 0]})      # the rest: primary
    cost = breakdown(DEFAULT_PRICES, carrier="twilio", direction="inbound", seconds=61,
                     stt="deepgram", llm="openai", tts="elevenlabs", usage=usage)
    p = DEFAULT_PRICES
    assert cost["stt"] == pytest.approx(round(
        (60 + 30) / 60 * p["stt"]["deepgram"]["per_minute"]
        + 30 / 60 * p["stt"]["openai"]["per_minute"], 6))
    assert cost["tts"] == pytest.approx(round(
        1.0 * p["tts"]["elevenlabs"]["per_thousand_chars"]
        + 2.0 * p["tts"]["deepgram"]["per_thousand_chars"], 6))
    openai, anthropic = p["llm"]["openai"], p["llm"]["anthropic"]
    expected_llm = (1_000_000 * anthropic["input_per_million"]
                    + 100_000 * anthropic["output_per_million"]
                    + 1_000_000 * openai["input_per_million"]          # 2M in, 1M cached
                    + 1_000_000 * openai["cached_input_per_million"]
                    + 100_000 * openai["output_per_million"]) / 1e6
    assert cost["llm"] == pytest.approx(round(expected_llm, 6))
    assert cost["billed_seconds"] == 120.0


def test_usage_adds_up_across_streams() -> None:
    a = Usage(stt_seconds=1.0, stt_by={"deepgram": 1.0}, llm_by={"openai": [1, 2, 0]})
    a.add(Usage(stt_seconds=2.0, stt_by={"deepgram": 0.5, "openai": 1.5}, tts_chars=4,
                tts_by={"cartesia": 4}, llm_input_tokens=3, llm_by={"openai": [3, 0, 1]}))
    assert a.stt_seconds == 3.0 and a.stt_by == {"deepgram": 1.5, "openai": 1.5}
    assert a.tts_by == {"cartesia": 4} and a.llm_by == {"openai": [4, 2, 1]}
