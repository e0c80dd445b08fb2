"""Speaking an answer while the LLM still writes it: text in, audio out, sentence by sentence.

With a TTS that takes text as it is written (:attr:`~patterd.backends.tts.base.TTS.
streams_text`: ElevenLabs' or Cartesia's WebSocket), each sentence of the answer is a
:class:`LiveSentence`: its stream is opened before its first word (the socket connects while
the LLM thinks), the LLM's tokens go to it as they arrive, and its audio is queued on the
playout as it comes. Sentences are synthesised concurrently but played in order: a sentence's
audio waits until the previous one's is all queued.

The transcript stays what was heard: a sentence is an :class:`~.playout.Utterance` (with its
mark) from its first audio byte on — a sentence that produced no audio is not in it — and a
barge-in cuts the utterances as it does on the sentence path.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING

from ..backends.tts.base import LiveSpeech
from ..ops.logging import get_logger

if TYPE_CHECKING:
    from .playout import Utterance
    from .turns import Speaker

log = get_logger("patterd.session")

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


class LiveSentence:
    """One sentence: its text fed to the TTS as it comes, its audio queued in order."""

    def __init__(self, speaker: Speaker, previous: LiveSentence | None) -> None:
        self._speaker = speaker
        self.stream: LiveSpeech = speaker.tts.synthesize_live(speaker.encoding)
        self.text = ""
        self.utterance: Utterance | None = None
        self._began: float | None = None
        self._task = asyncio.get_running_loop().create_task(self._play(previous))

    def feed(self, text: str) -> None:
        """More of the sentence."""
        if not self.text:
            text = text.lstrip()
            if not text:
                return
            self._began = time.monotonic()
        self.text += text
        self.stream.feed(text)
        if self.utterance is not None:
            self.utterance.text = self.text.strip()

    def end(self) -> None:
        """The sentence is complete (a sentence never fed is dropped)."""
        if self.text:
            self.stream.end()
        else:
            self.cancel()

    def cancel(self) -> None:
        """Stop its synthesis now (what is queued stays queued)."""
        self.stream.cancel()

    async def queued(self) -> None:
        """Wait until all its audio is queued (or it failed or was cancelled)."""
        await asyncio.wait([self._task])

    async def _play(self, previous: LiveSentence | None) -> None:
        speaker = self._speaker
        playout = speaker.playout
        if previous is not None:
            await previous.queued()
        utt: Utterance | None = None
        try:
            async for audio in self.stream:
                if utt is None:
                    utt = self.utterance = playout.begin(self.text.strip())
                    speaker.spoken.append(utt)
                    if self._began is not None:
                        speaker.metrics.turn_latency.labels("tts_first_byte").observe(
                            time.monotonic() - self._began)
                encoded = audio if speaker.native else speaker.codec.encode(audio)
                playout.feed(utt, encoded)
                if utt.cleared_at is not None:
                    break
        except Exception as exc:  # noqa: BLE001 - no provider could speak it; counted there
            log.warning("tts_failed", chars=len(self.text), heard=utt is not None,
                        error=repr(exc))
        finally:
            await self.stream.aclose()
            if utt is not None:
                utt.text = self.text.strip()
                playout.finish(utt)
                if utt.queued == 0:
                    speaker.unspoken(utt)
            if self.text and (utt is not None or self.stream.ended):   # not a void one
                speaker.count_chars(getattr(self.stream, "provider", ""), len(self.text))


class LiveReply:
    """An answer spoken as it is written: cuts the LLM's text into sentences and feeds each
    to its :class:`LiveSentence`. The next sentence's stream is opened ahead of its text."""

    def __init__(self, speaker: Speaker) -> None:
        self._speaker = speaker
        self.sentences: list[LiveSentence] = []
        self._pending = ""         # the text of the current sentence
        self._fed = 0              # how much of it the current sentence has had
        self._next: LiveSentence | None = LiveSentence(speaker, None)

    def _current(self) -> LiveSentence:
        if self._next is None:
            self._next = LiveSentence(self._speaker, self.sentences[-1] if self.sentences
                                      else None)
        sentence = self._next
        if not self.sentences or self.sentences[-1] is not sentence:
            self.sentences.append(sentence)
        return sentence

    def feed(self, text: str) -> None:
        """The LLM's next piece of text."""
        self._pending += text
        *complete, rest = _SENTENCE_END.split(self._pending)
        for sentence in complete:
            if sentence[self._fed:]:
                self._current().feed(sentence[self._fed:])
            self._close_sentence()
        self._pending = rest
        if rest[self._fed:].strip() or (self._fed and rest[self._fed:]):
            self._current().feed(rest[self._fed:])
            self._fed = len(rest)

    def _close_sentence(self) -> None:
        """The current sentence is complete; the next one's stream opens now."""
        if self._next is not None and self.sentences and self.sentences[-1] is self._next:
            self._next.end()
            self._next = LiveSentence(self._speaker, self._next)
        self._fed = 0

    def speak_now(self) -> None:
        """End the sentence being written (a tool round follows)."""
        if self._pending.strip():
            self._close_sentence()
        self._pending, self._fed = "", 0

    def drop(self) -> None:
        """The unfinished sentence is void (the LLM failed over, or its answer was cut):
        its synthesis stops; what of it was already queued plays."""
        if self._next is not None and self.sentences and self.sentences[-1] is self._next:
            self._next.cancel()
            self._next = LiveSentence(self._speaker, self._next)
        self._pending, self._fed = "", 0

    async def finish(self) -> list[Utterance]:
        """The answer is complete: speak the rest, wait until every sentence's audio is
        queued; returns the utterances (sentences that produced audio)."""
        if self._pending.strip():
            self._close_sentence()
        spare, self._next = self._next, None
        if spare is not None and (not self.sentences or self.sentences[-1] is not spare):
            spare.cancel()
            await spare.queued()
        for sentence in self.sentences:
            await sentence.queued()
        return [s.utterance for s in self.sentences if s.utterance is not None]

    async def aclose(self) -> None:
        """Stop everything still being synthesised (a barge-in, a cancelled turn)."""
        pending = [s for s in [*self.sentences, self._next] if s is not None]
        self._next = None
        for sentence in pending:
            sentence.cancel()
        for sentence in pending:
            sentence._task.cancel()
        await asyncio.gather(*(s._task for s in pending), return_exceptions=True)


__all__ = ["LiveReply", "LiveSentence"]
