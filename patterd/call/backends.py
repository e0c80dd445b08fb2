"""The speech and language backends one process shares between its calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..audio.segmenter import SpeechSegmenter
from ..backends.llm.base import LLM
from ..backends.stt.base import STT
from ..backends.tts.base import TTS
from ..config import Config
from .turns import SpeechCache


def default_segmenter(config: Config) -> Callable[[], SpeechSegmenter]:
    """A factory of per-call VAD segmenters as ``vad:`` says."""
    opts = config.vad.options
    threshold = float(opts.get("threshold") or 0.5)
    min_speech = float(opts.get("min_speech") or 0.1)
    min_silence = float(opts.get("min_silence") or 0.5)

    def make() -> SpeechSegmenter:
        from ..audio.vad import EnergyGate, EnergyVad, SileroVad
        vad = EnergyVad() if config.vad.provider == "energy" else EnergyGate(SileroVad())
        return SpeechSegmenter(vad, threshold=threshold, min_speech=min_speech,
                               min_silence=min_silence)

    return make


@dataclass
class Backends:
    """STT, LLM and TTS providers plus the per-call VAD factory and the speech cache."""

    stt: STT
    llm: LLM
    tts: TTS
    new_segmenter: Callable[[], SpeechSegmenter]
    speech_cache: SpeechCache = field(default_factory=SpeechCache)

    @classmethod
    async def from_config(cls, config: Config) -> Backends:
        """Create and start the providers the config names."""
        from ..backends import create_llm, create_stt, create_tts
        stt = create_stt(config.stt, config.agent, llm=config.llm)
        await stt.start()
        return cls(stt=stt, llm=create_llm(config.llm, config.agent),
                   tts=create_tts(config.tts, config.agent),
                   new_segmenter=default_segmenter(config))

    async def close(self) -> None:
        """Release every provider."""
        for backend in (self.stt, self.llm, self.tts):
            await backend.close()
