"""Cost of a call whose failover chains used several providers: each at its own rate."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from patterd.backends.llm.base import TokenUsage
from patterd.call.context import Meter
from patterd.ops.cost import Usage, breakdown
from patterd.ops.pricing import DEFAULT_PRICES, merge_pricing


def llm_cost(pricing: Any, usage: Usage, primary: str = "anthropic") -> float:
    return breakdown(pricing, carrier="twilio", direction="inbound", seconds=0,
                     stt="deepgram", llm=primary, tts="elevenlabs", usage=usage)["llm"]


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


def test_cache_writes_cost_their_own_rate_and_reads_the_cached_one() -> None:
    # 10k prompt tokens: 6k read from the cache, 3k written to it, 1k fresh; 1k out (Haiku)
    usage = Usage(llm_input_tokens=10_000, llm_output_tokens=1_000, llm_cached_tokens=6_000,
                  llm_cache_write_tokens=3_000, llm_by={"anthropic": [10_000, 1_000, 6_000, 3_000]})
    # 1,000 × $1 + 6,000 × $0.10 + 3,000 × $1.25 + 1,000 × $5, per million
    assert llm_cost(DEFAULT_PRICES, usage) == pytest.approx(0.01035)
    # the same tokens with nobody claiming them: priced at the primary's rates all the same
    unclaimed = Usage(llm_input_tokens=10_000, llm_output_tokens=1_000,
                      llm_cached_tokens=6_000, llm_cache_write_tokens=3_000)
    assert llm_cost(DEFAULT_PRICES, unclaimed) == pytest.approx(0.01035)


def test_a_table_without_a_cache_write_rate_charges_1_25_times_the_input() -> None:
    sonnet = {"input_per_million": 3.0, "output_per_million": 15.0,
              "cached_input_per_million": 0.30}
    pricing = {**DEFAULT_PRICES, "llm": {"anthropic": sonnet}}
    writes = Usage(llm_input_tokens=1_000_000, llm_cache_write_tokens=1_000_000)
    assert llm_cost(pricing, writes) == pytest.approx(3.75)
    # an older [in, out, cached] entry has no writes: all input at the input rate
    old = Usage(llm_input_tokens=1_000_000, llm_by={"anthropic": [1_000_000, 0, 0]})
    assert llm_cost(pricing, old) == pytest.approx(3.0)


def test_pricing_accepts_an_anthropic_cache_write_override() -> None:
    problems: list[str] = []
    table = merge_pricing({"llm": {"anthropic": {"cache_write_input_per_million": 3.75}}},
                          "pricing", problems)
    assert problems == [] and table["llm"]["anthropic"]["cache_write_input_per_million"] == 3.75
    assert DEFAULT_PRICES["llm"]["anthropic"]["cache_write_input_per_million"] == 1.25
    merge_pricing({"llm": {"anthropic": {"cache_write_input_per_million": -1}}}, "pricing",
                  problems)
    assert problems == ["pricing.llm.anthropic.cache_write_input_per_million: expected a "
                        "price in USD (a number ≥ 0), got -1"]


def test_the_meter_carries_cache_writes_to_the_calls_usage() -> None:
    meter = Meter()
    meter.tokens(TokenUsage(6_000, 10, 0, cache_write_tokens=5_900), "anthropic")
    meter.tokens(TokenUsage(6_100, 12, 5_900, "anthropic", cache_write_tokens=150), "openai")
    meter.tokens(TokenUsage(300, 5, 256), "openai")        # OpenAI caches without writes
    total = meter.total(SimpleNamespace(tts_chars=0, tts_by={}))  # type: ignore[arg-type]
    assert (total.llm_input_tokens, total.llm_cached_tokens,
            total.llm_cache_write_tokens) == (12_400, 6_156, 6_050)
    assert total.llm_by == {"anthropic": [12_100, 22, 5_900, 6_050], "openai": [300, 5, 256, 0]}
    call = Usage(llm_by={"anthropic": [1, 0, 0]})          # the record's, grown by the stream
    call.add(total)
    assert call.llm_by["anthropic"] == [12_101, 22, 5_900, 6_050]
    assert call.llm_cache_write_tokens == 6_050
