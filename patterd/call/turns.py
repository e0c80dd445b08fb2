"""One agent turn: LLM → sentences → TTS → paced playout, cancellable at any point.

Text is spoken sentence by sentence as the LLM streams it; synthesized audio is encoded once to
the carrier's codec. Replies that recur (greetings, rule replies) are cached as encoded audio,
so the offline agent synthesizes each of them once per process.

The transcript is built from :attr:`Speaker.spoken`: a sentence no TTS provider managed to
speak (no audio queued) is left out of it and its text blanked, so the record never claims
what the caller did not hear. An answer cut at its length cap drops its unfinished sentence.

With a TTS that takes text as it is written (ElevenLabs' or Cartesia's WebSocket), the LLM's
tokens go to it as they arrive and each sentence is spoken while it is still being written
(:mod:`.live_speech`); fixed messages (greetings, apologies) and the offline engines keep the
sentence path.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..audio.codecs import Codec
from ..backends.llm.base import LLM, Message, StartOver, TokenUsage, ToolCall, ToolSpec, Truncated
from ..backends.tts.base import PCM16, TTS
from ..ops.logging import get_logger
from ..ops import trace as tracing
from ..ops.metrics import Metrics
from .conversation import SpeakNow, converse
from .live_speech import LiveReply
from .playout import Playout, Utterance

if TYPE_CHECKING:
    from ..backends.llm.tools import ToolRunner

log = get_logger("patterd.session")

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
MAX_CACHED_SECONDS = 30.0


class SpeechCache:
    """Encoded audio of recently spoken texts (LRU), shared by the calls of a process."""

    def __init__(self, max_entries: int = 512) -> None:
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._max = max_entries

    def get(self, codec: str, text: str) -> bytes | None:
        """The cached audio, if any."""
        key = (codec, text)
        audio = self._items.get(key)
        if audio is not None:
            self._items.move_to_end(key)
        return audio

    def put(self, codec: str, text: str, audio: bytes) -> None:
        """Remember a complete synthesis."""
        self._items[(codec, text)] = audio
        self._items.move_to_end((codec, text))
        while len(self._items) > self._max:
            self._items.popitem(last=False)


@dataclass
class TurnResult:
    """What a finished (or cancelled) turn produced."""

    utterances: list[Utterance] = field(default_factory=list)
    tools: list[ToolCall] = field(default_factory=list)
    text: str = ""


class Speaker:
    """Speaks text on one call's playout through the TTS, with the shared cache."""

    def __init__(self, tts: TTS, codec: Codec, playout: Playout, cache: SpeechCache,
                 metrics: Metrics) -> None:
        self._tts, self._codec, self._playout = tts, codec, playout
        self._cache, self._metrics = cache, metrics
        # A provider that speaks the carrier's G.711 itself: its bytes go out untouched.
        self._native = codec.name in tts.output_encodings and codec.sample_rate == 8000
        self._encoding = codec.name if self._native else PCM16
        self.tts, self.codec, self.playout, self.metrics = tts, codec, playout, metrics
        self.native, self.encoding = self._native, self._encoding
        self.spoken: list[Utterance] = []  # this turn's utterances, for the transcript
        self.tts_chars = 0                 # characters synthesised (cached replays are free)
        self.tts_by: dict[str, int] = {}   # the same by the provider that spoke them

    async def say(self, text: str) -> Utterance:
        """Queue ``text``; returns once all its audio is queued (playback continues).

        A TTS failure is not raised: every provider of the chain has failed on the sentence
        (each failure counted there), so the caller hears nothing of it — it is left out of
        :attr:`spoken` (its text blanked) and the turn goes on with the next sentence."""
        utt = self._playout.begin(text)
        self.spoken.append(utt)
        cached = self._cache.get(self._codec.name, text)
        if cached:
            self._playout.feed(utt, cached)
            self._playout.finish(utt)
            return utt
        began = time.monotonic()
        first = True
        first_byte: float | None = None
        parts: list[bytes] = []
        self.tts_chars += len(text)
        span = tracing.begin("tts", **{"patterd.tts.characters": len(text)})
        error = ""
        stream = self._tts.synthesize(text, self._encoding)
        try:
            async for audio in stream:
                if first:
                    first_byte = time.monotonic() - began
                    self._metrics.turn_latency.labels("tts_first_byte").observe(first_byte)
                    first = False
                encoded = audio if self._native else self._codec.encode(audio)
                parts.append(encoded)
                self._playout.feed(utt, encoded)
                if utt.cleared_at is not None:
                    break
        except asyncio.CancelledError:
            error = "CancelledError"
            raise
        except Exception as exc:  # noqa: BLE001 - no provider could speak it; counted there
            error = type(exc).__name__
            log.warning("tts_failed", chars=len(text), heard=utt.queued > 0, error=repr(exc))
            parts.clear()                   # a part of a sentence is not worth caching
        finally:
            await stream.aclose()
            self._playout.finish(utt)
            name = getattr(stream, "provider", "") or self._tts.name
            self.tts_by[name] = self.tts_by.get(name, 0) + len(text)
            if utt.queued == 0:             # not a sound of it reached the caller
                self._unspoken(utt)
            span.end(error, **{"patterd.tts.provider": name,
                               "patterd.tts.first_byte_s": first_byte,
                               "patterd.tts.audio_s": round(utt.seconds, 3),
                               "patterd.tts.cut": utt.cleared_at is not None})
        if parts and utt.cleared_at is None and utt.seconds <= MAX_CACHED_SECONDS:
            self._cache.put(self._codec.name, text, b"".join(parts))
        return utt

    @property
    def streams_text(self) -> bool:
        """Whether answers are spoken as they are written (see :mod:`.live_speech`)."""
        return bool(getattr(self._tts, "streams_text", False))

    def count_chars(self, provider: str, chars: int) -> None:
        """``chars`` characters were sent to ``provider`` (the TTS cost)."""
        self.tts_chars += chars
        name = provider or self._tts.name
        self.tts_by[name] = self.tts_by.get(name, 0) + chars

    def unspoken(self, utt: Utterance) -> None:
        """Keep ``utt`` out of the transcript: nothing of it was heard."""
        utt.text = ""
        self.spoken[:] = [u for u in self.spoken if u is not utt]

    _unspoken = unspoken


async def run_turn(llm: LLM, speaker: Speaker, history: list[Message], *,
                   user_text: str | None, dtmf: str | None, metrics: Metrics,
                   tools: Sequence[ToolSpec] = (), runner: "ToolRunner | None" = None,
                   context: Mapping[str, str] | None = None, max_rounds: int = 3,
                   on_usage: Callable[[TokenUsage], None] = lambda usage: None) -> TurnResult:
    """Stream the LLM's answer into speech, sentence by sentence as tokens arrive; built-in
    tool calls are returned for the caller to run once the speech has played.

    ``history`` includes this turn's user message; tool rounds are appended to it (see
    :func:`~patterd.call.conversation.converse`)."""
    result = TurnResult()
    tracing.reply_started(user_text, dtmf)
    began = time.monotonic()
    pending = ""
    first = True
    live = LiveReply(speaker) if speaker.streams_text else None
    events = converse(llm, history, user_text=user_text, dtmf=dtmf, tools=tools, runner=runner,
                      context=context or {}, max_rounds=max_rounds, on_usage=on_usage)
    try:
        async for event in events:
            if isinstance(event, ToolCall):
                result.tools.append(event)
                continue
            if live is not None:
                if isinstance(event, (StartOver, Truncated)):
                    live.drop()
                elif isinstance(event, SpeakNow):
                    live.speak_now()
                elif event.text:
                    if first:
                        metrics.turn_latency.labels("llm_first_token").observe(
                            time.monotonic() - began)
                        first = False
                    live.feed(event.text)
                continue
            if isinstance(event, StartOver):
                pending = ""          # the failed provider's unfinished sentence is dropped
                continue
            if isinstance(event, Truncated):
                pending = ""          # cut at the length cap: only whole sentences are spoken
                continue
            if isinstance(event, SpeakNow):
                if pending.strip():
                    result.utterances.append(await speaker.say(pending.strip()))
                pending = ""
                continue
            if not event.text:
                continue
            if first:
                metrics.turn_latency.labels("llm_first_token").observe(time.monotonic() - began)
                first = False
            pending += event.text
            *sentences, pending = _SENTENCE_END.split(pending)
            for sentence in sentences:
                if sentence.strip():
                    result.utterances.append(await speaker.say(sentence.strip()))
        if live is not None:
            result.utterances = await live.finish()
    except Exception:
        if live is not None:     # what was said stays: the complete sentences are spoken
            live.drop()
            await live.finish()
        raise
    finally:
        await events.aclose()
        if live is not None:
            await live.aclose()
    if pending.strip():
        result.utterances.append(await speaker.say(pending.strip()))
    result.text = " ".join(u.text for u in result.utterances if u.text)   # what was spoken
    return result


async def played(utterances: list[Utterance], timeout: float) -> bool:
    """Wait until every utterance was heard (mark echoed) or cut; False on timeout."""
    waits = [asyncio.ensure_future(u.done.wait()) for u in utterances if not u.done.is_set()]
    if waits:
        try:
            _, pending = await asyncio.wait(waits, timeout=timeout)
        finally:
            for w in waits:
                w.cancel()
        if pending:
            return False
    return all(u.played for u in utterances)
