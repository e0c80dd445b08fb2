"""One live call: turn-taking, barge-in, endpointing, key presses, timers and the transcript.

The carrier's translator turns frames into events; the session reacts to them synchronously on
the hot path (decode → VAD → STT push) and runs everything slow (recognition, replies, REST
actions) in its own tasks, so a slow backend never stalls the media socket. The replies
themselves are in :mod:`.replies`; keys are gathered into one answer by :mod:`.keypad`.
Every message the agent speaks has its ``{name}`` placeholders filled from the call's
variables (``agent.variables`` with the per-call ones over them).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..audio.codecs import get_codec
from ..audio.resample import Resampler
from ..audio.segmenter import SpeechEnd, SpeechStart
from ..backends.llm.base import Message
from ..backends.stt.base import PCM16
from ..carriers.base import AudioIn, CallControl, DtmfIn, MarkPlayed, MediaProtocol, StreamStarted
from ..config import Config
from ..ops.logging import get_logger
from ..carriers.stream_token import HANDOFF_PARAM
from .context import Meter, call_variables, stream_context
from .handoff import resume
from .keypad import Keypad, dtmf_grammar
from .playout import Playout
from .preroll import Preroll
from .recovery import end_if_still_up
from .replies import FAILURE_APOLOGY, Replies
from .transcript import AgentLine, Line
from .turns import Speaker, played

log = get_logger("patterd.session")

REPROMPT = "Are you still there?"
SILENCE_GOODBYE = "I haven't heard anything, so I'll hang up now. Goodbye."
TIME_LIMIT_GOODBYE = "We have reached the time limit for this call. Goodbye."
HEARING_APOLOGY = "Sorry, I couldn't hear that just now. Could you say it again?"


class CallSession(Replies):
    """The state of one call's media stream (its replies: :class:`Replies`)."""

    def __init__(self, gw: Any, start: StreamStarted, proto: MediaProtocol, send: Any,
                 control: CallControl, carrier: str) -> None:
        self.gw, self.config = gw, gw.config
        cfg: Config = self.config
        self.call_id, self.carrier = start.call_id, carrier
        self.parameters = stream_context(start.parameters)
        self.resumed = self.parameters.get("resumed") == "1"
        self.stream_id = start.stream_id
        # A stream a draining replica moved here: its conversation is taken from the store.
        self.handoff_id = self.parameters.pop(HANDOFF_PARAM, "")
        # The webhook may have landed on another replica: the signed stream context says who.
        # The record is the call's live account: lines go into it as they happen.
        self.record = gw.registry.ensure(self.call_id, carrier,
                                         direction=self.parameters.get("direction", ""),
                                         from_number=self.parameters.get("from", ""),
                                         to_number=self.parameters.get("to", ""))
        self.control = control
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.call_started = self.started      # the call's first stream (a hand-off says)
        self.rx_codec = get_codec(start.rx_codec, start.rx_rate)
        self.rx_resampler = Resampler(start.rx_rate, 8000) if start.rx_rate != 8000 else None
        self.tx_codec = get_codec(proto.tx_codec, 8000)
        b = self.backends = gw.backends
        # A recogniser that takes the carrier's G.711 as is gets the frames untouched.
        self.stt_raw = start.rx_rate == 8000 and self.rx_codec.name in b.stt.input_encodings
        self.llm = b.llm
        self.stt_stream = b.stt.open_stream(self.rx_codec.name if self.stt_raw else PCM16)
        self.segmenter = b.new_segmenter(self._vad_event)
        self.playout = Playout(proto, self._send, on_start=self._utterance_started)
        self.speaker = Speaker(b.tts, self.tx_codec, self.playout, b.speech_cache, gw.metrics)
        self._send_frame = send
        # G.711 as is, or s16 at 8 kHz
        self.preroll = Preroll(8000 if self.stt_raw else 16000, self.segmenter.confirm_seconds)
        self.user_speaking = False
        self.listening = True
        self.history: list[Message] = []
        # agent.variables with this call's own (POST /v1/calls) over them, for every message
        self.variables = call_variables(cfg.agent.variables, self.parameters)
        if cfg.agent.system_prompt:
            self.history.append(Message("system", self._fill(cfg.agent.system_prompt)))
        self._lines: list[AgentLine] = []     # replies whose line is not settled yet
        self.stream_key = id(self)             # this stream's entry in record.streams
        self._ended_at: float | None = None    # loop time the media stream ended
        self.outcome = ""
        self.ending = False
        self.restart_expected = False      # we replaced the stream (Twilio DTMF, hand-off)
        self.handing_off = False           # moving to/from another replica: turns wait
        self.handoff_tried = False
        self.recognising = 0               # utterances being recognised
        self._deferred: tuple[str, str | None, str | None, float | None] | None = None
        self.stream_stopped = False
        self.reprompted = False
        self.last_activity = self.started
        self.rx_frames = self.tx_frames = 0
        self.stt_bytes = 0           # audio sent to the recogniser, counted as 8 kHz s16 PCM
        self.meter = Meter()
        self._reply: asyncio.Task[None] | None = None
        self._reply_begun_at = 0.0   # loop time the running reply was started
        self._reply_keys = ""        # the digits the running reply answers (no text with them)
        self._reply_asked: Message | None = None   # its user message, once in the history
        self._clearing: asyncio.Task[None] | None = None   # a barge-in clearing the playout
        self.keypad = Keypad(dtmf_grammar(cfg.llm), self._answer_keys)
        self._speech_end_at: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------------------
    def begin(self) -> None:
        """Greet the caller (unless this stream resumes a call), start recording if asked,
        and start the timers."""
        if self.handoff_id:
            self.handing_off = True
            self._spawn(resume(self))
        elif not self.resumed:
            self._start_reply(fixed=self.config.agent.first_message)
            if self.config.recording.enabled:
                self._spawn(self._record())
        self._spawn(self._watchdog())
        self._spawn(self._follow_stt())

    async def _record(self) -> None:
        try:
            ref = await self.control.start_recording(self.call_id,
                                                     self.config.recording.channels)
        except Exception as exc:  # noqa: BLE001 - a recording failure never ends the call
            log.warning("recording_start_failed", call_id=self.call_id, error=repr(exc))
            self.gw.metrics.backend_errors.labels("carrier", self.carrier).inc()
            return
        self.gw.registry.add_event(self.call_id, self.carrier, "recording_started",
                                   recording_id=ref)

    async def leave_voicemail(self, text: str) -> None:
        """A machine answered: speak ``text`` (placeholders filled) after its beep, then
        hang up."""
        if not self.ending:
            await self._end_call("voicemail", text)

    def stream_ended(self) -> None:
        """The media socket is gone (``stop`` or a drop): what was heard is counted up to
        now, however long closing the session then takes."""
        if self._ended_at is None:
            self._ended_at = self.loop.time()

    async def close(self) -> None:
        """The stream is gone: stop everything and record the call."""
        self.stream_ended()
        self.ending = True
        self.keypad.close()
        try:
            for task in [*self._tasks, *([self._reply] if self._reply else [])]:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._reply is not None:
                await asyncio.gather(self._reply, return_exceptions=True)
            # Every reply that started playing is in the record, cut to what was heard by the
            # time the stream ended (the caller hung up, a transfer, a drop, a failure).
            self._settle_lines(force=True, now=self._ended_at)
            await self.playout.close()
            await self.stt_stream.close()
            stream = getattr(self.segmenter, "stream", None)
            if stream is not None:
                stream.reset()  # drop windows still waiting for the batched VAD
            self._flush_frame_counts()
            await self._settle_call()
        except Exception as exc:  # noqa: BLE001 - a failure here must not lose the record
            self.gw.supervisor.report("call", exc, call_id=self.call_id)
            self._settle_lines(force=True, now=self._ended_at)
        finally:
            self.gw.record_stream_end(self, self.outcome or "completed",
                                      call_over=not self.restart_expected)

    async def _settle_call(self) -> None:
        """No call is left billing when its stream ends without the call ending."""
        if not self.stream_stopped and not self.outcome and not self.restart_expected:
            # The socket dropped without a stop: make sure the call is not left billing.
            self.outcome = "failed"
            try:
                await self.control.hangup(self.call_id)
            except Exception as exc:  # noqa: BLE001 - logged, nothing else to do
                log.warning("hangup_after_drop_failed", call_id=self.call_id, error=repr(exc))
        if (self.stream_stopped and not self.outcome and not self.restart_expected
                and self.control.stop_keeps_call_up):
            # A stream the carrier stopped without the call ending (streaming_stop, a media
            # failure) would leave it up and billing: hang up unless it reports the end.
            self.gw.spawn(end_if_still_up(self.gw, self.control, self.call_id, self.carrier),
                          name="stopped-stream-hangup")

    # -- events from the carrier (hot path) ------------------------------------------------
    def on_audio(self, event: AudioIn) -> None:
        """One inbound frame."""
        self.rx_frames += 1
        pcm = self.rx_codec.decode(event.payload)
        if self.rx_resampler is not None:
            pcm = self.rx_resampler.process(pcm)
            if not pcm:
                return
        stt_audio = event.payload if self.stt_raw else pcm
        preroll = self.preroll
        preroll.append(stt_audio)
        if len(preroll) >= preroll.next_trim:
            preroll.trim(self.segmenter.unscored_seconds)
        events = self.segmenter.feed(pcm)   # () when the VAD scores in batches
        if self.user_speaking and self.listening:
            self.stt_stream.push(stt_audio)
            self.stt_bytes += len(pcm)
        for ev in events:
            self._vad_event(ev)

    def _vad_event(self, ev: SpeechStart | SpeechEnd) -> None:
        if self.ending:
            return
        if isinstance(ev, SpeechStart):
            self._speech_started(ev.at_seconds)
        else:
            self._speech_ended(ev)

    def on_event(self, event: Any) -> None:
        """Every non-audio event."""
        if isinstance(event, DtmfIn):
            self._dtmf(event.digit)
        elif isinstance(event, MarkPlayed):
            if self.playout.on_mark(event.name) is not None and self._lines:
                self._settle_lines()     # a reply cut short without a clear, now heard

    # -- turn-taking -------------------------------------------------------------------------
    def _speech_started(self, at: float) -> None:
        """The VAD confirmed speech that began at stream time ``at``."""
        self.last_activity = self.loop.time()
        if self.ending:
            return
        if self.agent_busy:
            if not self.config.agent.barge_in:
                self.listening = False  # the agent talks on; this utterance is not heard
                return
            self._interrupt()
        self.listening = True
        self.user_speaking = True
        for audio in self.preroll.since(at, self.segmenter.position_seconds):
            self.stt_stream.push(audio)
            self.stt_bytes += len(audio) * (2 if self.stt_raw else 1)

    def _speech_ended(self, ev: SpeechEnd) -> None:
        self.last_activity = now = self.loop.time()
        if not self.user_speaking:
            self.listening = True
            return
        self.user_speaking = False
        # The VAD confirms the end after some silence: when did the caller really stop?
        lag = max(0.0, self.segmenter.position_seconds - ev.at_seconds)
        self._speech_end_at = now - lag
        self.gw.metrics.turn_latency.labels("endpointing").observe(lag)
        self._spawn(self._recognise(self._speech_end_at))

    async def _recognise(self, ended_at: float) -> None:
        asked = self.loop.time()     # the VAD's decision; its lag is the endpointing stage
        self.recognising += 1
        try:
            result = await self.stt_stream.finalize()
            self.credit_stt()        # to the provider that recognised the utterance
        except Exception as exc:  # noqa: BLE001 - every recogniser failed: say so, stay up
            log.warning("recognition_failed", call_id=self.call_id, error=str(exc))
            if not self.ending:
                self._start_reply(fixed=HEARING_APOLOGY)
            return
        finally:
            self.recognising -= 1
        self.gw.metrics.turn_latency.labels("stt").observe(self.loop.time() - asked)
        text = result.text.strip()
        if self.ending or not text:
            return
        self._add_line(Line("caller", text))
        log.info("caller_said", call_id=self.call_id, text=text)
        reply = self._reply
        if reply is not None and not reply.done() and self._reply_begun_at > ended_at:
            # Recognised late, and something newer (keys pressed since) is being answered:
            # the words are kept, but they never cancel that answer (it may be a goodbye).
            log.info("caller_said_late", call_id=self.call_id)
            return
        # Keys pressed just before speaking go with the words (the rules see both).
        self._start_reply(user_text=text, dtmf=self.keypad.take() or None, ended_at=ended_at)

    async def _follow_stt(self) -> None:
        """A recogniser with its own endpointing (Deepgram's speech_final) may end the turn
        before our VAD's min_silence has passed — if our VAD hears silence too."""
        try:
            async for t in self.stt_stream.events():
                if not t.endpoint or self.ending or not (self.user_speaking and self.listening):
                    continue
                ev = self.segmenter.end_now()
                if ev is not None:
                    self._speech_ended(ev)
        except Exception:  # noqa: BLE001 - a failing recogniser surfaces at finalize
            pass

    # -- key presses (see keypad.py) ---------------------------------------------------------
    def _dtmf(self, digit: str) -> None:
        self.last_activity = self.loop.time()
        if self.ending:
            return
        self._add_line(Line("caller", "", dtmf=digit))
        joined = self._join_keys(digit)
        if joined:
            self._answer_keys(joined)
            return
        if self.agent_busy and self.config.agent.barge_in:
            self._interrupt()       # on the first key: the agent stops talking at once
        ready = self.keypad.press(digit)
        if ready:
            self._answer_keys(ready)

    def _join_keys(self, digit: str) -> str:
        """Without DTMF rules, a key pressed while the model is still thinking about the
        previous keys (nothing said yet) joins them: one answer to "1234", not four
        cancelled ones. Returns the joined digits, or ``""``."""
        keys, reply = self._reply_keys, self._reply
        if not keys or self.keypad.sequences or reply is None or reply.done():
            return ""
        asked = self._reply_asked
        if asked is not None:    # the reply has begun: only if its question is still the last
            if self.speaker.spoken or not self.history or self.history[-1] is not asked:
                return ""
            self.history.pop()
        return keys + digit.upper()

    def _answer_keys(self, digits: str) -> None:
        if not self.ending:
            self._start_reply(dtmf=digits, ended_at=self.loop.time())

    # -- timers ------------------------------------------------------------------------------
    async def _watchdog(self) -> None:
        agent = self.config.agent
        while not self.ending:
            await asyncio.sleep(0.5)
            self._flush_frame_counts()
            now = self.loop.time()
            if now - self.call_started >= agent.max_call_seconds:
                await self._end_call("max_duration", TIME_LIMIT_GOODBYE)
                return
            if self.agent_busy or self.user_speaking:
                continue
            if now - self.last_activity >= agent.silence_timeout:
                if self.reprompted:
                    await self._end_call("silence", SILENCE_GOODBYE)
                    return
                self.reprompted = True
                self._start_reply(fixed=REPROMPT)

    async def _end_call(self, outcome: str, goodbye: str) -> None:
        """Say goodbye (or the voicemail), then hang up through the carrier. What the agent
        was saying is cut (and recorded as heard, ``interrupted``) for the goodbye."""
        self.ending = True
        self.keypad.close()
        goodbye = self._fill(goodbye)
        await self._stop_talking()
        line = self._open_line()
        try:
            utt = await self.speaker.say(goodbye)
            await played([utt], timeout=utt.seconds + 5.0)
            self._settle(line, self.loop.time())
        except Exception as exc:  # noqa: BLE001 - the call is hung up all the same
            self.gw.supervisor.report("call", exc, call_id=self.call_id)
        finally:
            line.closed = True
            self._settle_lines()
        self.outcome = outcome
        try:
            await self.control.hangup(self.call_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("hangup_failed", call_id=self.call_id, error=repr(exc))
        self.gw.registry.add_event(self.call_id, self.carrier, "hangup", by="gateway",
                                   reason=outcome)

    async def _stop_talking(self) -> None:
        """Cancel the running reply and clear whatever of the agent is still playing."""
        reply, self._reply = self._reply, None
        if reply is not None and not reply.done():
            reply.cancel()
            await asyncio.gather(reply, return_exceptions=True)
        if self._clearing is not None and not self._clearing.done():
            await asyncio.wait([self._clearing])    # a barge-in's clear must not cut this
        if any(not u.done.is_set() for line in self._lines for u in line.spoken):
            await self.playout.clear()
        self._settle_lines()

    async def end(self, outcome: str, goodbye: str) -> None:
        """End the call from outside (drain, admin)."""
        if not self.ending:
            await self._end_call(outcome, goodbye)

    # -- helpers -----------------------------------------------------------------------------
    async def _send(self, frame: str) -> None:
        self.tx_frames += 1
        try:
            await self._send_frame(frame)
        except (ConnectionError, RuntimeError):
            pass  # the socket is closing; close() records the call

    def _flush_frame_counts(self) -> None:
        m = self.gw.metrics
        if self.rx_frames:
            m.frames_rx.inc(self.rx_frames)
            self.rx_frames = 0
        if self.tx_frames:
            m.frames_tx.inc(self.tx_frames)
            self.tx_frames = 0

    def credit_stt(self) -> None:
        """Credit the audio sent since the last call to the recogniser now in use."""
        self.meter.credit_stt(self.stt_bytes, getattr(self.stt_stream, "provider", "")
                              or self.backends.stt.name)

    @property
    def duration(self) -> float:
        """Seconds since the stream started."""
        return self.loop.time() - self.started


__all__ = ["FAILURE_APOLOGY", "CallSession"]
