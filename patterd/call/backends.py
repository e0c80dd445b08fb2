"""The speech and language backends one process shares between its calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..audio.segmenter import SpeechEvent, SpeechSegmenter
from ..backends.llm.base import LLM
from ..backends.stt.base import STT
from ..backends.tts.base import TTS
from ..config import Config
from .turns import SpeechCache


SegmenterFactory = Callable[[Callable[[SpeechEvent], None]], SpeechSegmenter]


def default_segmenter(config: Config) -> tuple[SegmenterFactory, Any]:
    """A factory of per-call VAD segmenters as ``vad:`` says, and the process-wide batcher
    behind it (Silero runs once per tick for all calls, in a worker thread) or None.

    A segmenter either returns its events from ``feed`` (energy VAD) or hands them to the
    ``on_event`` callback once its windows are scored (batched Silero)."""
    opts = config.vad.options
    threshold = float(opts.get("threshold") or 0.5)
    min_speech = float(opts.get("min_speech") or 0.1)
    min_silence = float(opts.get("min_silence") or 0.5)
    if config.vad.provider == "energy":
        from ..audio.vad import EnergyVad

        def make_energy(on_event: Callable[[SpeechEvent], None]) -> SpeechSegmenter:
            return SpeechSegmenter(EnergyVad(), threshold=threshold, min_speech=min_speech,
                                   min_silence=min_silence)

        return make_energy, None
    from ..audio.batch_vad import AsyncSegmenter, BatchedVadStream, VadBatcher
    batcher = VadBatcher()

    def make_silero(on_event: Callable[[SpeechEvent], None]) -> SpeechSegmenter:
        return AsyncSegmenter(BatchedVadStream(batcher=batcher), on_event, threshold=threshold,
                              min_speech=min_speech, min_silence=min_silence)

    return make_silero, batcher


@dataclass
class Backends:
    """STT, LLM and TTS providers plus the per-call VAD factory and the speech cache."""

    stt: STT
    llm: LLM
    tts: TTS
    new_segmenter: SegmenterFactory
    vad_batcher: Any = None
    speech_cache: SpeechCache = field(default_factory=SpeechCache)

    @classmethod
    async def from_config(cls, config: Config) -> Backends:
        """Create and start the providers the config names."""
        from ..backends import create_llm, create_stt, create_tts
        stt = create_stt(config.stt, config.agent, llm=config.llm)
        tts = create_tts(config.tts, config.agent)
        await stt.start()
        await tts.start()   # a wrong voice fails here, at start-up, not on the first call
        segmenter, batcher = default_segmenter(config)
        return cls(stt=stt, llm=create_llm(config.llm, config.agent), tts=tts,
                   new_segmenter=segmenter, vad_batcher=batcher)

    async def close(self) -> None:
        """Release every provider."""
        for backend in (self.stt, self.llm, self.tts):
            await backend.close()
        if self.vad_batcher is not None:
            await self.vad_batcher.aclose()
