"""Deepgram's live transcription WebSocket (``GET /v1/listen``) on 127.0.0.1.

Protocol as documented (see /work/shared/reference/providers.md §1):

- handshake: ``Authorization: Token <key>`` (401 otherwise); ``encoding`` (``linear16``,
  ``mulaw``, ``alaw``) and ``sample_rate`` required for raw audio (400 otherwise); refusals carry
  a JSON body ``{"err_code", "err_msg", "request_id"}`` and the ``dg-error`` /
  ``dg-request-id`` headers, like Deepgram;
- binary frames are raw audio in the declared encoding; text frames are JSON control messages
  (``KeepAlive`` ignored, ``Finalize`` → a Result with ``from_finalize: true`` when unfinalised
  audio is buffered, ``CloseStream`` → last Result, ``Metadata`` with the audio ``duration``,
  close 1000);
- no audio and no KeepAlive for ``inactivity_timeout`` s → close 1011 ``NET-0001 …``.

What the results say is driven by the audio received: it is decoded and cut into 20 ms frames;
a frame whose RMS exceeds ``energy_threshold`` is speech. Speech starts an utterance
(``SpeechStarted``; its words come from ``script``, in order, one entry per utterance — the
stand-in recogniser), reveals one more word every ``word_ms`` of speech in interim Results,
and ``endpointing`` ms of silence after speech send ``is_final`` + ``speech_final`` with the
rest of the words; ``utterance_end_ms`` of silence after the last word send ``UtteranceEnd``.
Speech longer than ``final_every_ms`` is finalised in pieces (``is_final`` without
``speech_final``), as Deepgram does. All timestamps are seconds of audio received.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from patterd.audio.codecs import alaw_decode, ulaw_decode

ENCODINGS = {"linear16": 2, "mulaw": 1, "alaw": 1}
MODELS = {"nova-3", "nova-3-general", "nova-3-medical", "nova-2", "nova-2-general",
          "nova-2-phonecall"}
NET_0001 = ("NET-0001: Deepgram did not receive audio data or a text message within the "
            "timeout window.")
Recogniser = Callable[["ListenSession", int], str]


@dataclass
class ListenSession:
    """One accepted connection: what it asked for, what it sent, what it got back."""

    request_id: str
    query: dict[str, str]
    headers: dict[str, str]
    encoding: str
    sample_rate: int
    audio: bytearray = field(default_factory=bytearray)
    binary_frames: int = 0
    received: int = 0                      # bytes of audio (kept in ``audio`` when recording)
    controls: list[dict[str, Any]] = field(default_factory=list)   # text frames, parsed
    sent: list[dict[str, Any]] = field(default_factory=list)       # messages sent to it
    close_code: int | None = None          # the code the connection ended with
    closed_by: str = ""                     # "client" or "server"
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio received."""
        return self.received / (ENCODINGS[self.encoding] * self.sample_rate)

    def control_types(self) -> list[str]:
        """The ``type`` of every control message, in order."""
        return [str(c.get("type")) for c in self.controls]

    def results(self) -> list[dict[str, Any]]:
        """The ``Results`` messages sent."""
        return [m for m in self.sent if m.get("type") == "Results"]


class _Recogniser:
    """Energy segmentation of one connection's audio, producing Deepgram messages."""

    def __init__(self, fake: "FakeDeepgramListen", s: ListenSession) -> None:
        self.fake, self.s = fake, s
        q = s.query
        self.width = ENCODINGS[s.encoding]
        self.frame = s.sample_rate // 50 * self.width                  # 20 ms in bytes
        self.endpointing = None if q.get("endpointing") == "false" else \
            int(q.get("endpointing", "10"))
        self.interim = q.get("interim_results") == "true"
        self.utterance_end = int(q["utterance_end_ms"]) if q.get("utterance_end_ms") else None
        self.vad_events = q.get("vad_events") == "true"
        self.pending = bytearray()
        self.pos = 0.0              # s of audio processed
        self.seg_start = 0.0        # start of the audio not yet finalised
        self.words: list[str] = []  # the current utterance's words
        self.done_words = 0         # of them, already in an is_final
        self.speaking = False
        self.speech_ms = self.silence_ms = self.since_final_ms = 0
        self.next_interim_ms = 0
        self.last_word_end: float | None = None
        self.utterances = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.pending += data
        out: list[dict[str, Any]] = []
        while len(self.pending) >= self.frame:
            frame = bytes(self.pending[:self.frame])
            del self.pending[:self.frame]
            self._frame(frame, out)
        return out

    def _pcm(self, frame: bytes) -> np.ndarray:
        if self.s.encoding == "mulaw":
            frame = ulaw_decode(frame)
        elif self.s.encoding == "alaw":
            frame = alaw_decode(frame)
        return np.frombuffer(frame, dtype="<i2").astype(np.float64)

    def _frame(self, frame: bytes, out: list[dict[str, Any]]) -> None:
        pcm = self._pcm(frame)
        loud = bool(pcm.size) and float(np.sqrt(np.mean(pcm * pcm))) > self.fake.energy_threshold
        ms = round(1000 * len(frame) / self.width / self.s.sample_rate)
        self.pos += ms / 1000
        if loud:
            if not self.speaking:
                self.speaking = True
                self.speech_ms = self.since_final_ms = 0
                self.next_interim_ms = self.fake.interim_every_ms
                if not self.words[self.done_words:]:
                    self._next_utterance()
                if self.vad_events:
                    out.append({"type": "SpeechStarted", "channel": [0],
                                "timestamp": round(self.pos - ms / 1000, 3)})
            self.silence_ms = 0
            self.speech_ms += ms
            self.since_final_ms += ms
            self.last_word_end = None
            if self.since_final_ms >= self.fake.final_every_ms:
                self.since_final_ms = 0
                out.append(self._result(self._revealed(), is_final=True))
            elif self.interim and self.speech_ms >= self.next_interim_ms:
                self.next_interim_ms = self.speech_ms + self.fake.interim_every_ms
                out.append(self._result(self._revealed(), is_final=False))
            return
        self.silence_ms += ms
        if self.speaking and self.endpointing is not None and self.silence_ms >= self.endpointing:
            self.speaking = False
            out.append(self._result(len(self.words), is_final=True, speech_final=True))
            self.last_word_end = self.pos - self.silence_ms / 1000
        if (self.last_word_end is not None and self.utterance_end is not None
                and (self.pos - self.last_word_end) * 1000 >= self.utterance_end):
            out.append({"type": "UtteranceEnd", "channel": [0, 1],
                        "last_word_end": round(self.last_word_end, 3)})
            self.last_word_end = None

    def _next_utterance(self) -> None:
        text = self.fake.recognise(self.s, self.utterances)
        self.utterances += 1
        self.words, self.done_words = text.split(), 0

    def _revealed(self) -> int:
        heard = 1 + max(0, self.speech_ms - 1) // self.fake.word_ms   # one word per word_ms
        return max(self.done_words, min(len(self.words), heard))

    def _result(self, upto: int, *, is_final: bool, speech_final: bool = False,
                from_finalize: bool = False) -> dict[str, Any]:
        words = self.words[self.done_words:upto]
        start, duration = self.seg_start, self.pos - self.seg_start
        if is_final:
            self.done_words = max(self.done_words, upto)
            self.seg_start = self.pos
        step = duration / max(1, len(words))
        return {
            "type": "Results", "channel_index": [0, 1], "duration": round(duration, 3),
            "start": round(start, 3), "is_final": is_final, "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{
                "transcript": " ".join(words), "confidence": 0.98 if words else 0.0,
                "words": [{"word": w.lower().strip(".,?!"), "start": round(start + i * step, 3),
                           "end": round(start + (i + 1) * step, 3), "confidence": 0.98,
                           "punctuated_word": w} for i, w in enumerate(words)]}]},
            "metadata": {"request_id": self.s.request_id, "model_uuid": "fake-model-uuid",
                         "model_info": {"name": "general-nova-3", "version": "fake",
                                        "arch": "nova-3"}},
        }

    def flush(self, *, from_finalize: bool) -> list[dict[str, Any]]:
        """Finalize/CloseStream: process the buffered tail; then a final Result if any audio
        (or any word) is not finalised yet — nothing when all is (as Deepgram may)."""
        out: list[dict[str, Any]] = []
        if self.pending:
            tail = bytes(self.pending)
            self.pending.clear()
            self._frame(tail, out)
        if self.pos - self.seg_start < 1e-9 and self.done_words >= len(self.words):
            return out
        self.speaking = False       # the utterance is over; speech after this is a new one
        out.append(self._result(len(self.words), is_final=True, from_finalize=from_finalize))
        self.last_word_end = None
        return out


class FakeDeepgramListen:
    """The fake service. ``await start()`` returns its ``ws://127.0.0.1:PORT/v1`` base URL.

    ``script``: the text of each utterance, in order (per connection); ``recogniser`` may
    replace it: ``(session, index) -> text``; ``recogniser_class`` replaces the whole
    per-connection recogniser (``(fake, session)`` → an object with ``feed(bytes)`` and
    ``flush(from_finalize=…)`` returning the messages to send). ``record=False`` keeps no
    session, audio or message (a long benchmark). Knobs: ``refuse`` = (status, err_code, err_msg)
    refuses handshakes (``refuse_times`` of them, ``-1`` = all); ``close_after_seconds`` = audio
    seconds after which the connection is closed with ``close_code``/``close_reason``
    (``close_times`` connections, ``-1`` = all); ``stall`` = accept and read but never answer
    (and never time out); ``handshake_delay`` = seconds before answering the handshake.
    """

    def __init__(self, api_key: str = "dg-test-key", script: list[str] | tuple[str, ...] = (),
                 *, recogniser: Recogniser | None = None, inactivity_timeout: float = 10.0,
                 energy_threshold: float = 500.0, interim_every_ms: int = 200,
                 word_ms: int = 200, final_every_ms: int = 5000,
                 recogniser_class: Callable[..., Any] | None = None,
                 record: bool = True) -> None:
        self.api_key = api_key
        self.recogniser_class = recogniser_class or _Recogniser
        self.record = record
        self.script = list(script)
        self.recogniser = recogniser
        self.inactivity_timeout = inactivity_timeout
        self.energy_threshold = energy_threshold
        self.interim_every_ms = interim_every_ms
        self.word_ms = word_ms
        self.final_every_ms = final_every_ms
        # -- knobs --
        self.refuse: tuple[int, str, str] | None = None
        self.refuse_times = -1
        self.close_after_seconds: float | None = None
        self.close_times = -1
        self.close_code = 1011
        self.close_reason = ("NET-0000: The service has not transmitted a Text frame to the "
                             "client within the timeout window.")
        self.stall = False
        self.handshake_delay = 0.0
        # -- records --
        self.sessions: list[ListenSession] = []
        self.refused: list[dict[str, Any]] = []     # {"status", "headers", "query"}
        self._server: TestServer | None = None
        self._open: set[web.WebSocketResponse] = set()

    def recognise(self, s: ListenSession, index: int) -> str:
        """The words of utterance ``index`` of connection ``s``."""
        if self.recogniser is not None:
            return self.recogniser(s, index)
        return self.script[index] if index < len(self.script) else ""

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio received over every connection."""
        return sum(s.audio_seconds for s in self.sessions)

    async def start(self) -> str:
        """Listen on 127.0.0.1 (random port); the base URL to configure."""
        app = web.Application()
        app.router.add_get("/v1/listen", self._listen)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return f"ws://127.0.0.1:{self._server.port}/v1"

    async def stop(self) -> None:
        """Close open connections (1001) and the server."""
        for ws in list(self._open):
            await ws.close(code=1001, message=b"server shutting down")
        if self._server is not None:
            await self._server.close()
            self._server = None

    def _refusal(self, request: web.Request, status: int, code: str, msg: str) -> web.Response:
        rid = str(uuid.uuid4())
        self.refused.append({"status": status, "headers": dict(request.headers),
                             "query": dict(request.query)})
        return web.json_response({"err_code": code, "err_msg": msg, "request_id": rid},
                                 status=status, headers={"dg-error": msg, "dg-request-id": rid})

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        if self.handshake_delay:
            await asyncio.sleep(self.handshake_delay)
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "token" or key != self.api_key:
            return self._refusal(request, 401, "INVALID_AUTH", "Invalid credentials.")
        if self.refuse is not None and self.refuse_times != 0:
            if self.refuse_times > 0:
                self.refuse_times -= 1
            return self._refusal(request, *self.refuse)
        q = dict(request.query)
        problem = self._check(q)
        if problem:
            return self._refusal(request, 400, "Bad Request", problem)
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 22)
        rid = str(uuid.uuid4())
        await ws.prepare(request)
        s = ListenSession(rid, q, dict(request.headers), q["encoding"], int(q["sample_rate"]))
        if self.record:
            self.sessions.append(s)
        self._open.add(ws)
        try:
            await self._serve(ws, s)
        finally:
            self._open.discard(ws)
            if s.close_code is None:
                s.close_code = ws.close_code
            s.done.set()
        return ws

    @staticmethod
    def _check(q: dict[str, str]) -> str:
        enc = q.get("encoding")
        if enc is None or q.get("sample_rate") is None:
            return "encoding and sample_rate are required for raw audio."
        if enc not in ENCODINGS:
            return f"Invalid encoding: {enc}"
        if not q["sample_rate"].isdigit() or not 8000 <= int(q["sample_rate"]) <= 48000:
            return f"Invalid sample_rate: {q['sample_rate']}"
        if q.get("channels", "1") != "1":
            return "this fake supports channels=1 only"
        if q.get("model", "nova-3") not in MODELS:
            return "No such model/language/tier combination found."
        for key in ("interim_results", "vad_events", "smart_format", "punctuate"):
            if q.get(key, "false") not in ("true", "false"):
                return f"Invalid {key}: {q[key]}"
        ep = q.get("endpointing")
        if ep is not None and ep != "false" and not ep.isdigit():
            return f"Invalid endpointing: {ep}"
        if q.get("utterance_end_ms") is not None:
            if not q["utterance_end_ms"].isdigit():
                return f"Invalid utterance_end_ms: {q['utterance_end_ms']}"
            if q.get("interim_results") != "true":
                return "utterance_end_ms requires interim_results=true."
        return ""

    async def _send(self, ws: web.WebSocketResponse, s: ListenSession,
                    msgs: list[dict[str, Any]]) -> None:
        if self.stall:
            return
        for m in msgs:
            if self.record:
                s.sent.append(m)
            await ws.send_str(json.dumps(m))

    async def _serve(self, ws: web.WebSocketResponse, s: ListenSession) -> None:
        rec = self.recogniser_class(self, s)
        close_after = self.close_after_seconds if self.close_times != 0 else None
        if close_after is not None and self.close_times > 0:
            self.close_times -= 1
        while True:
            timeout = None if self.stall else self.inactivity_timeout
            try:
                msg = await ws.receive(timeout=timeout)
            except asyncio.TimeoutError:
                s.closed_by, s.close_code = "server", 1011
                await ws.close(code=1011, message=NET_0001.encode())
                return
            if msg.type == WSMsgType.BINARY:
                if self.record:
                    s.audio += msg.data
                s.binary_frames += 1
                s.received += len(msg.data)
                await self._send(ws, s, rec.feed(msg.data))
                if close_after is not None and s.audio_seconds >= close_after:
                    s.closed_by, s.close_code = "server", self.close_code
                    await ws.close(code=self.close_code, message=self.close_reason.encode())
                    return
            elif msg.type == WSMsgType.TEXT:
                try:
                    control = json.loads(msg.data)
                except ValueError:
                    control = {"type": None, "raw": msg.data}
                if self.record:
                    s.controls.append(control)
                kind = control.get("type")
                if kind == "Finalize":
                    await self._flush(ws, s, rec, from_finalize=True)
                elif kind == "CloseStream":
                    await self._flush(ws, s, rec, from_finalize=False)
                    await self._send(ws, s, [{
                        "type": "Metadata", "transaction_key": "deprecated",
                        "request_id": s.request_id, "sha256": "0" * 64,
                        "created": "2026-11-23T00:00:00.000Z",
                        "duration": round(s.audio_seconds, 3), "channels": 1,
                        "models": ["fake-model-uuid"],
                        "model_info": {"fake-model-uuid": {"name": "general-nova-3",
                                                           "version": "fake",
                                                           "arch": "nova-3"}}}])
                    s.closed_by, s.close_code = "server", 1000
                    await ws.close(code=1000)
                    return
            else:       # CLOSE / CLOSING / CLOSED / ERROR
                s.closed_by = s.closed_by or "client"
                return

    async def _flush(self, ws: web.WebSocketResponse, s: ListenSession, rec: _Recogniser,
                     *, from_finalize: bool) -> None:
        await self._send(ws, s, rec.flush(from_finalize=from_finalize))


__all__ = ["FakeDeepgramListen", "ListenSession"]
