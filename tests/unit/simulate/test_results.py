"""Result figures: percentiles, pacing jitter, the multi-call summary, JSON form."""

from __future__ import annotations

import json

import pytest

from patterd.simulate.results import (COMPLETED, ERROR, BargeIn, CallResult, Line, Turn,
                                      interarrival_jitter, percentile, summarize)


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile(list(map(float, range(101))), 95) == pytest.approx(95.0)


def test_jitter_of_perfect_pacing_is_zero_and_bursts_split_on_gaps() -> None:
    frames = [(i * 0.02, 0.02) for i in range(50)] + [(5 + i * 0.02, 0.02) for i in range(50)]
    j = interarrival_jitter(frames)
    assert j["mean_interval"] == pytest.approx(20.0)
    assert j["rfc3550"] == pytest.approx(0.0, abs=1e-9)
    assert j["max_interval"] == pytest.approx(20.0)
    uneven = [(0.0, 0.02), (0.03, 0.02), (0.04, 0.02), (0.07, 0.02), (0.08, 0.02)]
    assert interarrival_jitter(uneven)["rfc3550"] > 0
    assert interarrival_jitter([(0.0, 0.02)]) == {}


def test_ok_needs_a_good_outcome_and_no_errors() -> None:
    r = CallResult("twilio", "CA1", outcome=COMPLETED)
    assert r.ok
    r.errors.append("boom")
    assert not r.ok
    assert not CallResult("twilio", "CA2", outcome=ERROR).ok


def test_summary_and_json() -> None:
    a = CallResult("twilio", "CA1", outcome=COMPLETED, duration=30.0,
                   turns=[Turn("speech", "hi", 1.0, 2.0, 0.4), Turn("dtmf", "1", 3, 3.1)],
                   barge_ins=[BargeIn(5.0, 0.2)],
                   lines=[Line("agent", 2.4, 3.0, "hello"), Line("caller", 1.0, 2.0, "hi")])
    b = CallResult("twilio", "CA2", outcome=ERROR, duration=30.0, errors=["x"],
                   turns=[Turn("speech", "hi", 1.0, 2.0, 0.6)])
    s = summarize([a, b], cpu_seconds=3.0, pid=42)
    assert (s.calls, s.ok, s.failed) == (2, 1, 1)
    assert s.latency["p50"] == pytest.approx(0.5) and s.unanswered_turns == 1
    assert s.barge_in_clear["max"] == pytest.approx(0.2)
    assert s.call_minutes == pytest.approx(1.0) and s.cpu_per_call_minute == pytest.approx(3.0)
    doc = json.loads(json.dumps(a.to_dict()))
    assert [ln["who"] for ln in doc["transcript"]] == ["caller", "agent"]
    assert doc["ok"] is True and "agent_audio" not in doc


def test_audio_between_uses_the_heard_buffer_start() -> None:
    r = CallResult("twilio", "CA1", agent_audio=bytes(range(200)) * 80, audio_start=1.0)
    assert r.audio_between(1.0, 1.001) == r.agent_audio[:16]
    assert r.audio_between(0.0, 0.5) == b""
