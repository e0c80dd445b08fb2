"""One live call: turn-taking, barge-in, endpointing, timers and the transcript.

The carrier's translator turns frames into events; the session reacts to them synchronously on
the hot path (decode → VAD → STT push) and runs everything slow (recognition, replies, REST
actions) in its own tasks, so a slow backend never stalls the media socket.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from ..audio.codecs import get_codec
from ..audio.resample import Resampler
from ..audio.segmenter import SpeechEnd, SpeechStart
from ..backends.llm.base import Message, user_message
from ..backends.stt.base import PCM16
from ..carriers.base import AudioIn, CallControl, DtmfIn, MarkPlayed, MediaProtocol, StreamStarted
from ..config import Config
from ..ops.logging import get_logger
from .actions import perform
from .context import Meter, llm_context, stream_context
from .playout import Playout, Utterance
from .transcript import Line, heard_part
from .turns import Speaker, TurnResult, played, run_turn

log = get_logger("patterd.session")

REPROMPT = "Are you still there?"
SILENCE_GOODBYE = "I haven't heard anything, so I'll hang up now. Goodbye."
TIME_LIMIT_GOODBYE = "We have reached the time limit for this call. Goodbye."
FAILURE_APOLOGY = "Sorry, something went wrong on our side. Please try again in a moment."
HEARING_APOLOGY = "Sorry, I couldn't hear that just now. Could you say it again?"
PREROLL_FRAMES = 15  # 300 ms of audio before the VAD confirmed speech


class CallSession:
    """The state of one call's media stream."""

    def __init__(self, gw: Any, start: StreamStarted, proto: MediaProtocol, send: Any,
                 control: CallControl, carrier: str) -> None:
        self.gw, self.config = gw, gw.config
        cfg: Config = self.config
        self.call_id, self.carrier = start.call_id, carrier
        self.parameters = stream_context(start.parameters)
        self.resumed = self.parameters.get("resumed") == "1"
        # The webhook may have landed on another replica: the signed stream context says who.
        gw.registry.ensure(self.call_id, carrier,
                           direction=self.parameters.get("direction", ""),
                           from_number=self.parameters.get("from", ""),
                           to_number=self.parameters.get("to", ""))
        self.control = control
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
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
        self.preroll: collections.deque[bytes] = collections.deque(maxlen=PREROLL_FRAMES)
        self.user_speaking = False
        self.listening = True
        self.history: list[Message] = []
        if cfg.agent.system_prompt:
            self.history.append(Message("system", self._fill(cfg.agent.system_prompt)))
        self.transcript: list[Line] = []
        self.turn_latencies: list[dict[str, float]] = []
        self.outcome = ""
        self.ending = False
        self.restart_expected = False      # we replaced the stream (Twilio DTMF)
        self.stream_stopped = False
        self.reprompted = False
        self.last_activity = self.started
        self.rx_frames = self.tx_frames = 0
        self.stt_bytes = 0           # audio sent to the recogniser, counted as 8 kHz s16 PCM
        self.meter = Meter()
        self._reply: asyncio.Task[None] | None = None
        self._speech_end_at: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------------------
    def begin(self) -> None:
        """Greet the caller (unless this stream resumes a call), start recording if asked,
        and start the timers."""
        if not self.resumed:
            self._start_reply(fixed=self._fill(self.config.agent.first_message))
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
        """A machine answered: speak ``text`` after its beep, then hang up."""
        if not self.ending:
            await self._end_call("voicemail", text)

    async def close(self) -> None:
        """The stream is gone: stop everything and record the call."""
        self.ending = True
        for task in [*self._tasks, *( [self._reply] if self._reply else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._reply is not None:
            await asyncio.gather(self._reply, return_exceptions=True)
        await self.playout.close()
        await self.stt_stream.close()
        stream = getattr(self.segmenter, "stream", None)
        if stream is not None:
            stream.reset()  # drop windows still waiting for the batched VAD
        self._flush_frame_counts()
        if not self.stream_stopped and not self.outcome and not self.restart_expected:
            # The socket dropped without a stop: make sure the call is not left billing.
            self.outcome = "failed"
            try:
                await self.control.hangup(self.call_id)
            except Exception as exc:  # noqa: BLE001 - logged, nothing else to do
                log.warning("hangup_after_drop_failed", call_id=self.call_id, error=repr(exc))
        self.gw.record_stream_end(self, self.outcome or "completed",
                                  call_over=not self.restart_expected)

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
        self.preroll.append(stt_audio)
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
            self._speech_started()
        else:
            self._speech_ended(ev)

    def on_event(self, event: Any) -> None:
        """Every non-audio event."""
        if isinstance(event, DtmfIn):
            self._dtmf(event.digit)
        elif isinstance(event, MarkPlayed):
            self.playout.on_mark(event.name)

    # -- turn-taking -------------------------------------------------------------------------
    @property
    def agent_busy(self) -> bool:
        """The agent is thinking or talking."""
        return (self._reply is not None and not self._reply.done()) or self.playout.speaking

    def _speech_started(self) -> None:
        self.last_activity = self.loop.time()
        if self.ending:
            return
        if self.agent_busy:
            if not self.config.agent.barge_in:
                self.listening = False  # the agent talks on; this utterance is not heard
                return
            self._spawn(self._barge_in())
        self.listening = True
        self.user_speaking = True
        for audio in self.preroll:
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
        try:
            result = await self.stt_stream.finalize()
            self.credit_stt()        # to the provider that recognised the utterance
        except Exception as exc:  # noqa: BLE001 - every recogniser failed: say so, stay up
            log.warning("recognition_failed", call_id=self.call_id, error=str(exc))
            if not self.ending:
                self._start_reply(fixed=HEARING_APOLOGY)
            return
        self.gw.metrics.turn_latency.labels("stt").observe(self.loop.time() - asked)
        text = result.text.strip()
        if self.ending or not text:
            return
        self.transcript.append(Line("caller", text))
        log.info("caller_said", call_id=self.call_id, text=text)
        self._start_reply(user_text=text, ended_at=ended_at)

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

    def _dtmf(self, digit: str) -> None:
        self.last_activity = self.loop.time()
        if self.ending:
            return
        self.transcript.append(Line("caller", "", dtmf=digit))
        if self.agent_busy and self.config.agent.barge_in:
            self._spawn(self._barge_in())
        self._start_reply(dtmf=digit, ended_at=self.loop.time())

    async def _barge_in(self) -> None:
        began = self.loop.time()
        reply, self._reply = self._reply, None
        if reply is not None:
            reply.cancel()
        cut = await self.playout.clear()
        if reply is not None:
            await asyncio.gather(reply, return_exceptions=True)
        self._record_agent(cut, interrupted=True)
        self.gw.metrics.barge_ins.inc()
        log.info("barge_in", call_id=self.call_id, clear_ms=round((self.loop.time() - began)
                                                                  * 1000, 1))

    def _start_reply(self, *, fixed: str = "", user_text: str | None = None,
                     dtmf: str | None = None, ended_at: float | None = None) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
        self._speech_end_at = ended_at
        self._reply = self.loop.create_task(self._run_reply(fixed, user_text, dtmf))

    async def _run_reply(self, fixed: str, user_text: str | None, dtmf: str | None) -> None:
        self.speaker.spoken = []
        asked = user_message(user_text, dtmf)
        if asked is not None:
            self.history.append(asked)
        if fixed:
            result = TurnResult(utterances=[await self.speaker.say(fixed)], text=fixed)
        else:
            b = self.backends
            try:
                result = await run_turn(
                    self.llm, self.speaker, self.history, user_text=user_text, dtmf=dtmf,
                    metrics=self.gw.metrics, tools=b.tool_specs, runner=b.tools,
                    context=llm_context(self.call_id, self.carrier, self.parameters),
                    max_rounds=self.config.llm.max_tool_rounds,
                    on_usage=lambda used: self.meter.tokens(used, self.llm.name))
            except Exception as exc:  # noqa: BLE001 - every provider failed: apologise
                log.warning("reply_failed", call_id=self.call_id, error=repr(exc))
                result = TurnResult(utterances=[await self.speaker.say(FAILURE_APOLOGY)])
        total = sum(u.seconds for u in result.utterances)
        await played(result.utterances, timeout=total + 5.0)
        self._record_agent(self.speaker.spoken, interrupted=False)
        self.last_activity = self.loop.time()
        for tool in result.tools:
            await self._act(tool)

    def _utterance_started(self, utt: Utterance) -> None:
        if self._speech_end_at is not None and utt.first_sent_at is not None:
            response = utt.first_sent_at - self._speech_end_at
            self.gw.metrics.turn_latency.labels("response").observe(response)
            self.turn_latencies.append({"response": round(response, 4)})
            self._speech_end_at = None

    def _record_agent(self, utterances: list[Utterance], *, interrupted: bool) -> None:
        parts = []
        cut = False
        for utt in utterances:
            if utt.cleared_at is not None:
                cut = True
                parts.append(heard_part(utt.text, utt.heard_seconds, utt.seconds))
            else:
                parts.append(utt.text)
        text = " ".join(p for p in parts if p)
        if utterances:
            self.transcript.append(Line("agent", text, interrupted=interrupted and cut))
            if text:  # the model remembers what the caller actually heard
                self.history.append(Message("assistant", text))
        utterances.clear()

    async def _act(self, tool: Any) -> None:
        if tool.name == "send_dtmf" and self.control.dtmf_ends_stream:
            self.restart_expected = True
        event = await perform(tool, self.control, self.call_id,
                              self.config.agent.transfer_targets, self.parameters)
        self.gw.registry.add_event(self.call_id, self.carrier, event.pop("type"), **event)
        if not event.get("ok"):
            self.restart_expected = False
            return
        if tool.name == "transfer_call":
            self.outcome, self.ending = "transferred", True
        elif tool.name == "end_call":
            self.outcome, self.ending = "completed", True

    # -- timers ------------------------------------------------------------------------------
    async def _watchdog(self) -> None:
        agent = self.config.agent
        while not self.ending:
            await asyncio.sleep(0.5)
            self._flush_frame_counts()
            now = self.loop.time()
            if now - self.started >= agent.max_call_seconds:
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
        """Say goodbye, then hang up through the carrier."""
        self.ending = True
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
            await asyncio.gather(self._reply, return_exceptions=True)
        self.speaker.spoken = []
        utt = await self.speaker.say(goodbye)
        await played([utt], timeout=utt.seconds + 5.0)
        self._record_agent(self.speaker.spoken, interrupted=False)
        self.outcome = outcome
        try:
            await self.control.hangup(self.call_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("hangup_failed", call_id=self.call_id, error=repr(exc))
        self.gw.registry.add_event(self.call_id, self.carrier, "hangup", by="gateway",
                                   reason=outcome)

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

    def _fill(self, text: str) -> str:
        variables = {**self.config.agent.variables,
                     **{k[4:]: v for k, v in self.parameters.items() if k.startswith("var_")}}
        for name, value in variables.items():
            text = text.replace("{" + name + "}", value)
        return text

    def credit_stt(self) -> None:
        """Credit the audio sent since the last call to the recogniser now in use."""
        self.meter.credit_stt(self.stt_bytes, getattr(self.stt_stream, "provider", "")
                              or self.backends.stt.name)

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def duration(self) -> float:
        """Seconds since the stream started."""
        return self.loop.time() - self.started


__all__ = ["CallSession"]
