"""OpenTelemetry traces of a simulated call, received by a local OTLP/HTTP receiver and
decoded with the official protobuf definitions; and each turn's stages in the call record
(the console's waterfall), with tracing off."""

from __future__ import annotations

from typing import Any

import pytest

from patterd.simulate import WaitForAgent, say, simulate_call
from tests.conftest import config, gateway_of, twilio_raw
from tests.support.net import free_port
from tests.support.otlp import OtlpReceiver, ReceivedSpan, tree
from tests.support.signing import TWILIO_TOKEN

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CALLER = "+15557654321"
AGENT = {
    "agent": {"first_message": "Hi there."},
    "llm": {"provider": "rules", "rules": [
        {"phrases": ["goodbye"], "reply": "Goodbye!", "action": {"hangup": True}}],
        "fallback": "Sorry?"},
}
STAGES = ("endpointing", "stt", "llm_first_token", "tts_first_byte", "response")


def cfg(**extra: Any) -> Any:
    raw = twilio_raw(admin={"token": TOKEN}, **AGENT, **extra)
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    return config(raw)


@pytest.fixture
async def steps() -> list[Any]:
    return [WaitForAgent(), await say("goodbye"), WaitForAgent(required=False)]


def walk(span: ReceivedSpan) -> list[ReceivedSpan]:
    return [span, *(s for c in span.children for s in walk(c))]


async def test_a_call_is_a_tree_of_spans_with_providers_latency_and_cost(
        daemon: Any, steps: list[Any]) -> None:
    async with OtlpReceiver() as rx:
        c = cfg(telemetry={"otlp_endpoint": rx.url, "service_name": "patterd-test"})
        client = await daemon(c)
        result = await simulate_call(c, str(client.make_url("")).rstrip("/"), steps,
                                     timeout=30, from_number=CALLER)
        assert result.ok, (result.outcome, result.detail, result.errors)
        spans = await rx.wait_for(lambda sp: any(s.name == "call" for s in sp))
    assert rx.requests[0]["Content-Type"] == "application/x-protobuf"
    (root,) = tree(spans)
    assert root.name == "call" and {s.trace_id for s in spans} == {root.trace_id}
    assert root.resource["service.name"] == "patterd-test"
    a = root.attributes
    assert a["patterd.call.id"] == result.call_id and a["patterd.carrier"] == "twilio"
    assert a["patterd.direction"] == "inbound" and a["patterd.call.outcome"] == "completed"
    assert a["patterd.call.from"] == "+*******4321"
    assert (a["patterd.stt.provider"], a["patterd.llm.provider"], a["patterd.tts.provider"]) \
        == ("pocketsphinx", "rules", "espeak")
    assert a["patterd.media_seconds"] > 1 and a["patterd.turns"] == 1
    assert a["patterd.cost.carrier_usd"] > 0
    assert a["patterd.cost.total_usd"] == pytest.approx(a["patterd.cost.carrier_usd"])
    # the greeting is spoken outside any turn; the caller's goodbye is the turn
    assert [s.name for s in root.children if s.name == "tts"]
    (turn,) = [s for s in root.children if s.name == "turn"]
    assert turn.attributes["patterd.turn.trigger"] == "speech"
    assert turn.attributes["patterd.turn.answered"] is True
    for stage in STAGES:
        assert turn.attributes[f"patterd.latency.{stage}_s"] >= 0, stage
    names = [s.name for s in turn.children]
    for name in ("endpointing", "stt", "llm", "tts"):
        assert name in names, names
    endpointing = turn.children[names.index("endpointing")]
    assert endpointing.start_ns == pytest.approx(turn.start_ns, abs=2e6)
    llm = turn.children[names.index("llm")]
    assert llm.attributes["patterd.llm.provider"] == "rules"
    assert llm.attributes["patterd.llm.round"] == 0
    assert llm.attributes["patterd.llm.tool_calls"] == 1        # the hang-up
    tts = [s for s in turn.children if s.name == "tts"][0]
    assert tts.attributes["patterd.tts.characters"] == len("Goodbye!")
    assert tts.attributes["patterd.tts.first_byte_s"] >= 0
    (hangup,) = [s for s in walk(root) if s.name == "carrier.hangup"]
    assert hangup.attributes["patterd.carrier.ok"] is True and hangup.status_code != 2
    for span in walk(root):
        assert span.start_ns <= span.end_ns
        for child in span.children:
            assert child.start_ns >= span.start_ns - 2_000_000, (span.name, child.name)
    # no secret and no unmasked number anywhere
    texts = [str(v) for s in spans for v in [*s.attributes.values(), *s.resource.values()]]
    assert not [t for t in texts if "5557654321" in t or TWILIO_TOKEN in t or TOKEN in t]


async def test_each_turn_in_the_record_has_its_stages_with_tracing_off(
        daemon: Any, steps: list[Any]) -> None:
    c = cfg()
    client = await daemon(c)
    assert c.telemetry.otlp_endpoint == ""
    result = await simulate_call(c, str(client.make_url("")).rstrip("/"), steps, timeout=30)
    assert result.ok
    assert gateway_of(client).tracer is None
    record = await (await client.get(f"/v1/calls/{result.call_id}", headers=AUTH)).json()
    (turn,) = record["turns"]
    for stage in STAGES:
        assert turn[stage] >= 0, stage
    offsets = turn["offsets"]
    assert offsets["endpointing"] == 0
    # the stages follow one another: each starts after the one before it began
    order = [offsets[s] for s in ("endpointing", "stt", "llm_first_token", "tts_first_byte")]
    assert order == sorted(order)
    assert offsets["stt"] == pytest.approx(turn["endpointing"], abs=0.05)
    assert turn["response"] >= turn["endpointing"] + turn["stt"] - 0.01
    assert record["created_at"] < turn["at"] < record["ended_at"]
    # the caller heard the reply about when the record says
    assert result.latencies and abs(result.latencies[0] - turn["response"]) < 0.15
