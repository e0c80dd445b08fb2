"""A stand-in recogniser for the soak at hundreds of calls: Deepgram's live WebSocket on
127.0.0.1 that "recognises" the soak's own phrases by their loudness envelope.

The offline recogniser (pocketsphinx) costs about 0.75 CPU-s per call-minute, so one core holds
some 40 soak calls; with ``soak.py --stt deepgram`` the daemons use their real Deepgram
backend (one socket per call, G.711 as it came, ``Finalize`` at each end of turn) against this
server — the fake of the test suite (``tests/support/fakes/deepgram_listen.py``: handshake,
auth, control messages, close codes as Deepgram documents them) with a recogniser that costs
nothing per frame: it only buffers the μ-law it is sent, and on ``Finalize``/``CloseStream``
compares the utterance's 10 ms loudness envelope with the envelopes of the soak's phrases
(synthesised once, through μ-law like the calls) and answers the matching phrase's text in one
``is_final`` Result. Audio with nothing loud in it is heard as nothing; a piece of a phrase as
words no rule answers.

    .venv/bin/python benchmarks/soak_stt.py      # self-check: each phrase, shifted, recognised
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from patterd.audio.codecs import ulaw_decode, ulaw_encode  # noqa: E402
from patterd.simulate.playout import VOICED_RMS  # noqa: E402
from tests.support.fakes.deepgram_listen import (FakeDeepgramListen,  # noqa: E402
                                                 ListenSession)

API_KEY = "soak-deepgram-key"
WINDOW = 80                      # samples: 10 ms at 8 kHz
POINTS = 64                      # envelope points compared
MAX_BUFFER = 8000 * 60           # μ-law bytes kept per utterance (60 s)
# A whole phrase scores ~0 against itself; a piece of one (the daemon cut the caller's turn at
# a pause, or the caller hung up mid-phrase) ≥ 0.55 against anything. A piece is heard as words
# no rule answers, as a recogniser hears half a sentence: the agent answers with its fallback.
MAX_SCORE = 0.3
UNCLEAR = "hmm"


def envelope(pcm_s16: np.ndarray) -> np.ndarray | None:
    """The loud stretch's 10 ms log-RMS (dB), or None when nothing is loud."""
    n = len(pcm_s16) // WINDOW * WINDOW
    if not n:
        return None
    frames = pcm_s16[:n].astype(np.float32).reshape(-1, WINDOW)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    loud = np.flatnonzero(rms >= VOICED_RMS)
    if not len(loud):
        return None
    return 20 * np.log10(np.maximum(rms[loud[0]:loud[-1] + 1], 1.0))


class PhraseBook:
    """The phrases a soak caller says, as envelopes to match against."""

    def __init__(self, phrases: dict[str, bytes]) -> None:
        """``phrases``: text → s16le 8 kHz PCM (as the caller plays it)."""
        self.texts: list[str] = []
        self.lengths: list[int] = []
        self.shapes: list[np.ndarray] = []
        for text, pcm in phrases.items():
            heard = np.frombuffer(ulaw_decode(ulaw_encode(pcm)), dtype="<i2")
            env = envelope(heard)
            if env is None:
                continue
            self.texts.append(text)
            self.lengths.append(len(env))
            self.shapes.append(self._shape(env))

    @staticmethod
    def _shape(env: np.ndarray) -> np.ndarray:
        x = np.interp(np.linspace(0, len(env) - 1, POINTS), np.arange(len(env)), env)
        x = x - x.mean()
        return x / (np.linalg.norm(x) or 1.0)

    def match(self, ulaw: bytes) -> str:
        """The text of the phrase whose envelope ``ulaw``'s matches ("" for silence,
        :data:`UNCLEAR` for no phrase)."""
        env = envelope(np.frombuffer(ulaw_decode(ulaw), dtype="<i2"))
        if env is None or not self.texts:
            return ""
        shape = self._shape(env)
        best, best_score = UNCLEAR, MAX_SCORE
        for text, length, ref in zip(self.texts, self.lengths, self.shapes):
            score = (1.0 - float(shape @ ref)) + abs(np.log(len(env) / length))
            if score < best_score:
                best, best_score = text, score
        return best


class _PhraseRecogniser:
    """Per connection: buffers audio; a flush answers the nearest phrase."""

    def __init__(self, fake: "SoakDeepgram", s: ListenSession) -> None:
        self.fake, self.s = fake, s
        self.buffer = bytearray()
        self.pos = self.start = 0.0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if len(self.buffer) < MAX_BUFFER:
            self.buffer += data
        self.pos += len(data) / self.s.sample_rate
        return []

    def flush(self, *, from_finalize: bool) -> list[dict[str, Any]]:
        if self.s.encoding != "mulaw" or not self.buffer:
            text = ""
        else:
            text = self.fake.book.match(bytes(self.buffer))
        self.buffer.clear()
        start, duration = self.start, self.pos - self.start
        self.start = self.pos
        if not duration and not text:
            return []
        words = text.split()
        step = duration / max(1, len(words))
        return [{
            "type": "Results", "channel_index": [0, 1], "duration": round(duration, 3),
            "start": round(start, 3), "is_final": True, "speech_final": True,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{
                "transcript": text, "confidence": 0.98 if words else 0.0,
                "words": [{"word": w.lower(), "start": round(start + i * step, 3),
                           "end": round(start + (i + 1) * step, 3), "confidence": 0.98,
                           "punctuated_word": w} for i, w in enumerate(words)]}]},
            "metadata": {"request_id": self.s.request_id, "model_uuid": "soak-stand-in",
                         "model_info": {"name": "soak-phrases", "version": "1",
                                        "arch": "envelope"}},
        }]


class SoakDeepgram(FakeDeepgramListen):
    """The server: ``await start()`` → the ``ws://127.0.0.1:PORT/v1`` base URL."""

    def __init__(self, phrases: dict[str, bytes]) -> None:
        super().__init__(API_KEY, recogniser_class=_PhraseRecogniser, record=False,
                         inactivity_timeout=30.0)
        self.book = PhraseBook(phrases)


async def _self_check() -> int:
    from patterd.simulate import synthesize
    from soak_calls import PHRASES
    phrases = {text: await synthesize(text) for text in PHRASES.values()}
    book = PhraseBook(phrases)
    rng = np.random.default_rng(1)
    wrong = 0
    for text, pcm in phrases.items():
        for shift in (0, 37, 80, 159):
            lead = (rng.normal(0, 30, 8000 // 5 + shift)).astype("<i2").tobytes()
            heard = book.match(ulaw_encode(lead + pcm + lead))
            piece = book.match(ulaw_encode(lead + pcm[:len(pcm) // 4 * 2]))
            wrong += heard != text
            wrong += piece != UNCLEAR
            print(f"{text!r:32} +{shift:3d} samples → {heard!r}; its first half → {piece!r}")
    print(f"{wrong} wrong")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "benchmarks"))
    raise SystemExit(asyncio.run(_self_check()))
