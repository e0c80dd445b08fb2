"""Paced outbound audio: real-time pacing, marks after utterances, clear and what was heard."""

from __future__ import annotations

import asyncio
import json
from base64 import b64decode

from patterd.call.playout import Playout
from patterd.carriers.twilio.media import TwilioMedia


def _proto() -> TwilioMedia:
    t = TwilioMedia()
    t.parse(json.dumps({"event": "start", "streamSid": "MZ1", "start": {
        "streamSid": "MZ1", "callSid": "CA1", "mediaFormat": {"encoding": "audio/x-mulaw"}}}))
    return t


async def test_audio_is_paced_near_real_time_and_marked() -> None:
    sent: list[tuple[float, dict]] = []
    loop = asyncio.get_running_loop()

    async def send(frame: str) -> None:
        sent.append((loop.time(), json.loads(frame)))

    p = Playout(_proto(), send, chunk=0.04, lead=0.1)
    utt = p.begin("hello")
    p.feed(utt, b"\x01" * 8000)          # one second of audio
    p.finish(utt)
    began = loop.time()
    await asyncio.sleep(0.5)
    media = [(t, f) for t, f in sent if f["event"] == "media"]
    assert 0.45 < 0.04 * len(media) < 0.75   # ≈ half of it sent after half a second
    await asyncio.sleep(0.7)
    events = [f["event"] for _, f in sent]
    assert events.count("media") == 25 and events[-1] == "mark"
    assert sent[-1][1]["mark"]["name"] == utt.mark
    assert sent[-1][0] - began > 0.8          # not dumped at once
    p.on_mark(utt.mark)
    assert utt.played and utt.done.is_set()
    await p.close()


async def test_clear_reports_what_was_heard() -> None:
    frames: list[dict] = []

    async def send(frame: str) -> None:
        frames.append(json.loads(frame))

    p = Playout(_proto(), send)
    utt = p.begin("one two three four five six seven eight nine ten")
    p.feed(utt, b"\x01" * 16000)          # two seconds
    p.finish(utt)
    await asyncio.sleep(0.5)
    cut = await p.clear()
    assert cut == [utt] and utt.cleared_at is not None and utt.done.is_set()
    assert 0.3 < utt.heard_seconds < 0.7
    assert frames[-1] == {"event": "clear", "streamSid": "MZ1"}
    sent_before = len(frames)
    await asyncio.sleep(0.2)
    assert len(frames) == sent_before     # nothing more after a clear
    assert not p.speaking
    await p.close()


async def test_empty_utterance_finishes_at_once() -> None:
    async def send(frame: str) -> None:
        raise AssertionError("nothing to send")

    p = Playout(_proto(), send)
    utt = p.begin("")
    p.finish(utt)
    assert utt.done.is_set() and utt.played
    await p.close()


async def test_the_tap_sees_every_frame_as_sent_and_the_clear() -> None:
    seen: list[tuple[str, bytes]] = []
    wire: list[dict] = []

    class Tap:
        def tx(self, payload: bytes) -> None:
            seen.append(("tx", payload))

        def cleared(self) -> None:
            seen.append(("clear", b""))

    async def send(frame: str) -> None:
        wire.append(json.loads(frame))

    p = Playout(_proto(), send, chunk=0.04)
    p.tap = Tap()
    utt = p.begin("hi")
    audio = bytes(range(256)) * 10            # 320 ms, distinct bytes
    p.feed(utt, audio)
    await asyncio.sleep(0.1)
    await p.clear()
    sent = [b64decode(f["media"]["payload"]) for f in wire if f["event"] == "media"]
    assert [kind for kind, _ in seen] == ["tx"] * len(sent) + ["clear"]
    assert [payload for _, payload in seen[:-1]] == sent      # the very bytes, in order
    assert b"".join(sent) == audio[:len(b"".join(sent))] and len(sent[0]) == 320
    await p.close()
