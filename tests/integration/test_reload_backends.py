"""SIGHUP with changed agent/backend sections: new calls get new providers, live calls keep
theirs, and the old providers close once the last call using them has ended."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from patterd.reload import Reloader
from patterd.simulate import Dtmf, Wait, WaitForAgent, simulate_call
from tests.conftest import config, gateway_of, twilio_raw
from tests.integration.test_live_calls import free_port, url_of


def raw_with(reply: str, api: str) -> dict:  # type: ignore[type-arg]
    raw = twilio_raw(agent={"first_message": "Hello."},
                     llm={"provider": "rules", "rules": [
                         {"dtmf": "5", "reply": reply},
                         {"dtmf": "9", "reply": "Bye.", "action": {"hangup": True}}]},
                     vad={"provider": "energy"})
    raw["carrier"]["api_base_url"] = api
    return raw


async def test_reload_swaps_backends_for_new_calls_only(daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api = f"http://127.0.0.1:{free_port()}"
    cfg = config(raw_with("Old reply.", api))
    client = await daemon(cfg, real=True)
    gw = gateway_of(client)
    old = gw.backends
    path = tmp_path / "patter.yaml"
    path.write_text(yaml.safe_dump(raw_with("New reply.", api)))

    async def reload_mid_call() -> None:
        while not gw.sessions:
            await asyncio.sleep(0.05)
        await Reloader(gw, path).request()
        assert gw.backends is not old
        # The live call still uses the old providers, so they stay open for it.
        assert gw.retired == [old]

    reloading = asyncio.create_task(reload_mid_call())
    first = await simulate_call(cfg, url_of(client), [WaitForAgent(), Wait(1.0), Dtmf("5"),
                                                      WaitForAgent(), Dtmf("9"),
                                                      WaitForAgent(required=False)], timeout=60)
    await reloading
    assert first.ok, (first.outcome, first.errors)
    lines = [ln["text"] for ln in gw.registry.get(first.call_id).transcript
             if ln["role"] == "agent"]
    assert "Old reply." in lines                      # the live call kept its agent
    for _ in range(100):
        if not gw.retired:
            break
        await asyncio.sleep(0.05)
    assert gw.retired == []                           # released once that call ended

    second = await simulate_call(gw.config, url_of(client),
                                 [WaitForAgent(), Dtmf("5"), WaitForAgent(), Dtmf("9"),
                                  WaitForAgent(required=False)], timeout=60)
    assert second.ok, (second.outcome, second.errors)
    lines = [ln["text"] for ln in gw.registry.get(second.call_id).transcript
             if ln["role"] == "agent"]
    assert "New reply." in lines and "Old reply." not in lines


async def test_reload_with_a_provider_that_cannot_start_keeps_the_old_set(
        daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api = f"http://127.0.0.1:{free_port()}"
    cfg = config(raw_with("Old reply.", api))
    client = await daemon(cfg, real=True)
    gw = gateway_of(client)
    old, old_config = gw.backends, gw.config
    raw = raw_with("New reply.", api)
    raw["tts"] = {"provider": "espeak", "voice": "no-such-voice-xx"}
    path = tmp_path / "patter.yaml"
    path.write_text(yaml.safe_dump(raw))
    await Reloader(gw, path).request()
    assert gw.backends is old and gw.config is old_config and gw.retired == []
