"""The console in a real browser (Debian's Chromium, headless, driven by Playwright): a
simulated phone call in the live list with its transcript filling in, the call's page with
its waterfall and a recording that plays, the history and its exports, the overview, a test
call from the browser's (fake) microphone, and caller text that stays text.

Each test writes screenshots of the pages it visits to ``tests/artifacts/console/``."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from patterd.simulate import Callee, WaitForAgent, say, simulate_call, simulate_outbound
from patterd.simulate import synthesize
from tests.conftest import config, gateway_of, twilio_raw
from tests.support.browser import PageWatch, chromium, shot, sign_in
from tests.support.net import free_port
from tests.support.stub_backends import stub_backends

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RULES = {"provider": "rules", "rules": [
    {"phrases": ["goodbye"], "reply": "Goodbye!", "action": {"hangup": True}}],
    "fallback": "Sorry?"}


def cfg(tmp_path: Path | None = None, **extra: Any) -> Any:
    sections: dict[str, Any] = {"admin": {"token": TOKEN}, "llm": RULES,
                                "agent": {"first_message": "Hi there."}}
    if tmp_path is not None:
        sections["recording"] = {"local_dir": str(tmp_path / "rec")}
    sections.update(extra)
    raw = twilio_raw(**sections)
    raw["carrier"]["api_base_url"] = f"http://127.0.0.1:{free_port()}"
    return config(raw)


def url_of(client: Any) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_live_call_history_call_page_exports_and_overview(daemon: Any,
                                                                tmp_path: Path) -> None:
    c = cfg(tmp_path)
    client = await daemon(c)
    base = url_of(client)
    steps = [WaitForAgent(), await say("goodbye"), WaitForAgent(required=False)]
    async with chromium() as browser:
        context = await browser.new_context(accept_downloads=True)
        page = await context.new_page()
        watch = PageWatch(page)
        await page.goto(f"{base}/console")
        await page.fill("#token", "not-the-token-0123456789")
        await page.click("#token-form button")
        await page.wait_for_selector("#token-error:has-text('refused')")
        await shot(page, "sign-in")
        await sign_in(page, base, TOKEN)
        await page.wait_for_selector("#live-empty:not([hidden])")

        # a phone call: it shows up, and its lines fill in while it is going on
        call = asyncio.ensure_future(simulate_call(c, base, steps, timeout=30))
        card = page.locator("article.live-call")
        await card.locator("li.line.caller").wait_for(timeout=20_000)
        assert not call.done()
        await shot(page, "live")
        assert await card.locator(".numbers").inner_text() == "+*******" \
            + (await card.locator(".numbers").inner_text())[8:12] + " → +*******1234"
        texts = await card.locator("li.line .text").all_inner_texts()
        assert texts[:2] == ["Hi there.", "goodbye"]
        result = await call
        assert result.ok
        await page.wait_for_selector("article.live-call", state="detached", timeout=10_000)
        await page.wait_for_selector("#live-empty:not([hidden])")

        # history → the call's page: transcript, waterfall, cost, a recording that plays
        await page.click("#nav a[data-page=calls]")
        row = page.locator(f"#calls-table tr[data-call-id='{result.call_id}']")
        await row.wait_for()
        await shot(page, "calls")
        await row.locator("a").click()
        await page.wait_for_selector("svg.waterfall")
        bars = page.locator("svg.waterfall rect.bar")
        stages = [await bars.nth(i).get_attribute("data-stage") for i in range(await bars.count())]
        assert stages == ["endpointing", "stt", "llm_first_token", "tts_first_byte", "response"]
        width = float(await page.locator("svg.waterfall rect.stage-response")
                      .get_attribute("width"))
        assert width > 100                      # the response spans most of the axis
        lines = await page.locator("#call ol.transcript li .text").all_inner_texts()
        assert lines == ["Hi there.", "goodbye", "Goodbye!"]
        assert await page.locator("#outcome").inner_text() == "completed"
        audio = page.locator("audio#recording")
        await page.wait_for_function(
            "() => document.querySelector('audio#recording')?.readyState >= 1", timeout=10_000)
        duration = await audio.evaluate("a => a.duration")
        assert duration == pytest.approx(result.duration, abs=1.0)
        await audio.evaluate("a => a.play()")
        await page.wait_for_function(
            "() => document.querySelector('audio#recording').currentTime > 0.3", timeout=5000)
        await shot(page, "call")

        # exports: what the browser downloads parses, one call
        await page.click("#nav a[data-page=calls]")
        await page.wait_for_selector("#calls-table tbody tr")
        async with page.expect_download() as got:
            await page.click("#export-csv")
        rows = list(csv.DictReader(io.StringIO(Path(await (await got.value).path())
                                               .read_text())))
        assert [r["call_id"] for r in rows] == [result.call_id]
        assert rows[0]["outcome"] == "completed" and rows[0]["transcript_lines"] == "3"
        async with page.expect_download() as got:
            await page.click("#export-json")
        doc = json.loads(Path(await (await got.value).path()).read_text())
        assert [r["call_id"] for r in doc["calls"]] == [result.call_id]
        assert doc["calls"][0]["transcript"][1]["text"] == "goodbye"

        # overview: the call, its outcome, its latency
        await page.click("#nav a[data-page=overview]")
        await page.wait_for_selector("#latency")
        assert await page.locator("#total-calls").inner_text() == "1"
        assert await page.locator("svg.bars rect[data-outcome=completed]").count() == 1
        assert (await page.locator("#p50").inner_text()).endswith(" ms")
        await shot(page, "overview")
        # the token never left in a URL, and no request carried a Referer
        sent = await watch.sent()
        await context.close()
    assert len(sent) > 20 and not [u for u, _ in sent if TOKEN in u]
    assert not [u for u, h in sent if h.get("referer")]
    assert f"Bearer {TOKEN}" in [h.get("authorization") for u, h in sent if "/v1/" in u]
    assert not watch.errors and not watch.dialogs


async def test_call_the_agent_from_the_browser_with_a_fake_microphone(
        daemon: Any, tmp_path: Path) -> None:
    """The offline default backends (pocketsphinx, espeak, Silero): what Chromium's fake
    microphone says is recognised, and the agent's answer is played in the page."""
    pcm = np.frombuffer(await synthesize("goodbye"), "<i2").astype(np.float32)
    # played in a loop by the fake device: "goodbye" every ~7 s, after the greeting's time
    audio = np.concatenate([np.zeros(8000 * 3, np.float32), pcm,
                            np.zeros(int(8000 * 3.5), np.float32)])
    wav = tmp_path / "caller.wav"
    with wave.open(str(wav), "wb") as w:      # the fake device takes 48 kHz best
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(soxr.resample(audio, 8000, 48000).clip(-32768, 32767)
                      .astype("<i2").tobytes())
    c = cfg(tmp_path, agent={"first_message": "Hi, this is the test agent."})
    client = await daemon(c, real=True)
    async with chromium("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                        f"--use-file-for-fake-audio-capture={wav}") as browser:
        page = await browser.new_page()
        watch = PageWatch(page)
        await sign_in(page, url_of(client), TOKEN, "#/test-call")
        await page.click("#call-agent")
        await page.wait_for_selector("#tc-state[data-call-id]", timeout=10_000)
        await page.wait_for_selector("#tc-state[data-ended]", timeout=30_000)
        await page.wait_for_selector("#tc-transcript li.line.agent >> nth=1")
        await shot(page, "test-call")
        state = await page.locator("#tc-state").inner_text()
        heard = page.locator("#tc-heard")
        seconds = float(await heard.get_attribute("data-seconds") or 0)
        peak = float(await heard.get_attribute("data-peak") or 0)
        call_id = await page.locator("#tc-state").get_attribute("data-call-id")
    assert state == "The agent hung up."
    assert seconds >= 1.0 and peak > 0.02, (seconds, peak)   # the page played the agent
    record = await (await client.get(f"/v1/calls/{call_id}", headers=AUTH)).json()
    assert record["carrier"] == "browser" and record["outcome"] == "completed"
    said = [(ln["role"], ln["text"]) for ln in record["transcript"]]
    # (a machine under load may mishear a first "goodbye": the loop says it again)
    assert said[0] == ("agent", "Hi, this is the test agent.")
    assert said[-2:] == [("caller", "goodbye"), ("agent", "Goodbye!")], said
    assert record["cost"]["carrier"] == 0 and record["turns"][0]["response"] > 0
    assert not watch.errors


PAYLOADS = ['<img src=x onerror="window.__xss=1;console.error(\'xss-img\')">',
            "<script>window.__xss=2;console.error('xss-script')</script>",
            '"><svg onload=alert(3)>']


async def test_what_callers_say_and_type_stays_text(daemon: Any) -> None:
    said = " ".join(PAYLOADS)
    c = cfg(agent={"first_message": "Hello {name}."})
    client = await daemon(c, stub_backends(c, stt_text=said))
    base = url_of(client)
    async with chromium() as browser:
        page = await browser.new_page()
        watch = PageWatch(page)
        await sign_in(page, base, TOKEN)
        # an outbound call whose variables (admin API) carry markup, answered by a person
        # whose words (the recogniser's text) carry more
        steps = [WaitForAgent(), await say("anything"), WaitForAgent(required=False),
                 await say("more"), WaitForAgent(required=False)]
        call = asyncio.ensure_future(simulate_outbound(
            c, base, "+15557654321", Callee("human", steps=steps), admin_token=TOKEN,
            variables={"name": PAYLOADS[0]}, timeout=40))
        card = page.locator("article.live-call")
        await card.locator("li.line.caller").wait_for(timeout=25_000)
        await shot(page, "xss-live")
        live_texts = await card.locator("li.line .text").all_inner_texts()
        assert live_texts[0] == f"Hello {PAYLOADS[0]}." and live_texts[1] == said
        result = await call
        assert result.ok, result
        call_id = result.call_id
        await page.goto(f"{base}/console#/calls/{call_id}")
        await page.wait_for_selector("#call ol.transcript")
        texts = await page.locator("#call ol.transcript li .text").all_inner_texts()
        assert texts[0] == f"Hello {PAYLOADS[0]}." and said in texts
        await page.click("#nav a[data-page=calls]")
        await page.wait_for_selector("#calls-table tbody tr")
        await shot(page, "xss-calls")
        await page.goto(f"{base}/console#/calls/{call_id}")
        await page.wait_for_selector("#call ol.transcript")
        await shot(page, "xss-call")
        assert await page.locator("#call img, #call script, #call ol.transcript svg").count() == 0
        assert await page.evaluate("() => window.__xss") is None
    assert not watch.dialogs and not watch.errors
    assert not [m for m in watch.console if "xss" in m or "Content Security Policy" in m], \
        watch.console
    assert gateway_of(client).registry.get(call_id) is not None
