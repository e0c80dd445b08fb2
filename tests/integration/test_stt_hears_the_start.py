"""The recogniser hears an utterance from its first syllable, however late the VAD confirms it.

A daemon whose VAD confirms speech only after 0.6 s of it (``vad.min_speech``; under load a
busy loop and the batcher delay a confirmation as much): the audio the recogniser got for the
caller's phrase holds the whole phrase, not its end only — a fixed 300 ms of pre-roll once cut
the first 0.3 s of every utterance, the whole first word of a short one ("goodbye" → "bye").
Real Silero VAD and rules LLM, on a real 127.0.0.1 socket; a stub recogniser that keeps what it
was sent.
"""

from __future__ import annotations

import numpy as np
import pytest

from patterd.backends.stt.base import STTStream
from patterd.call.backends import Backends, default_segmenter
from patterd.backends.llm.rules import RulesLLM
from patterd.simulate import WaitForAgent, say, simulate_call
from patterd.simulate.speech import trim_silence
from tests.conftest import config, twilio_raw
from tests.support.stub_backends import StubStt, StubSttStream, StubTts

pytestmark = pytest.mark.slow


class KeepingStt(StubStt):
    """Hears "goodbye" for every utterance, and keeps the audio of each."""

    def __init__(self) -> None:
        super().__init__("goodbye")
        self.utterances: list[bytearray] = []

    def open_stream(self, encoding: str = "PCM16") -> STTStream:
        stt = self

        class Stream(StubSttStream):
            def push(self, pcm: bytes) -> None:
                if not self._heard:
                    stt.utterances.append(bytearray())
                stt.utterances[-1] += pcm
                super().push(pcm)

        return Stream(self.text)


async def test_a_late_speech_confirmation_loses_no_syllable(daemon) -> None:  # type: ignore[no-untyped-def]
    cfg = config(twilio_raw(
        vad={"provider": "silero", "min_speech": 0.6, "turn_model": False},
        agent={"first_message": "Hello."},
        llm={"provider": "rules", "rules": [
            {"phrases": ["goodbye"], "reply": "Goodbye!"}]}))
    stt = KeepingStt()
    segmenter, batcher = default_segmenter(cfg)
    client = await daemon(cfg, Backends(stt=stt, llm=RulesLLM(cfg.llm, cfg.agent),
                                        tts=StubTts(), new_segmenter=segmenter,
                                        vad_batcher=batcher))
    phrase = await say("what are your opening hours", voice="en-us", rate=175)
    result = await simulate_call(cfg, str(client.make_url("")).rstrip("/"),
                                 [WaitForAgent(), phrase, WaitForAgent()], timeout=30)
    assert [t.latency is not None for t in result.turns] == [True], result.errors
    assert len(stt.utterances) == 1
    # The recogniser got the phrase's own first 200 ms (lost with a fixed 300 ms pre-roll).
    head = np.frombuffer(trim_silence(phrase.pcm)[:1600], dtype="<i2").astype(float)
    got = np.frombuffer(bytes(stt.utterances[0]), dtype="<i2").astype(float)
    corr = np.correlate(got, head, "valid") / (np.linalg.norm(head) *
                                               np.sqrt(np.convolve(got * got, np.ones(len(head)),
                                                                   "valid")) + 1e-9)
    assert corr.max() > 0.9, corr.max()
