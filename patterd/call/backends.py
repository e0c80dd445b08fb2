"""The speech and language backends one process shares between its calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..audio.segmenter import SpeechEvent, SpeechSegmenter
from ..backends.failover import ErrorSink
from ..backends.llm.base import LLM, ToolSpec
from ..backends.stt.base import STT
from ..backends.tts.base import TTS
from ..config import Config
from ..config.model import BackendConfig
from ..ops.supervise import Supervisor
from ..ops.trace import in_call_of
from .conversation import tool_specs
from .turns import SpeechCache

DEFAULT_STT_TIMEOUT = 8.0   # seconds for a final transcript before the next provider is tried


SegmenterFactory = Callable[..., SpeechSegmenter]
"""``factory(on_event, *, label="")``: a call's segmenter; ``label`` (the call id) names it in
the shared VAD's failure reports."""


def default_segmenter(config: Config, supervisor: Supervisor | None = None
                      ) -> tuple[SegmenterFactory, Any]:
    """A factory of per-call VAD segmenters as ``vad:`` says, and the process-wide batcher
    behind it (Silero runs once per tick for all calls, in a worker thread) or None. The
    batcher is supervised by ``supervisor`` (the gateway's in a daemon: a batcher restarting
    makes ``/readyz`` answer 503).

    A segmenter either returns its events from ``feed`` (energy VAD) or hands them to the
    ``on_event`` callback once its windows are scored (batched Silero)."""
    opts = config.vad.options
    threshold = float(opts.get("threshold") or 0.5)
    min_speech = float(opts.get("min_speech") or 0.1)
    min_silence = float(opts.get("min_silence") or 0.5)
    if config.vad.provider == "energy":
        from ..audio.vad import EnergyVad

        def make_energy(on_event: Callable[[SpeechEvent], None], *,
                        label: str | None = None) -> SpeechSegmenter:
            return SpeechSegmenter(EnergyVad(), threshold=threshold, min_speech=min_speech,
                                   min_silence=min_silence)

        return make_energy, None
    from ..audio.batch_vad import AsyncSegmenter, BatchedVadStream, VadBatcher
    batcher = VadBatcher(supervisor=supervisor)

    def make_silero(on_event: Callable[[SpeechEvent], None], *,
                    label: str | None = None) -> SpeechSegmenter:
        if label is None:   # a session's bound method: its call id names the stream
            label = str(getattr(getattr(on_event, "__self__", None), "call_id", "") or "")
        # The batcher's loop calls back: the events belong to the call making the segmenter.
        return AsyncSegmenter(BatchedVadStream(batcher=batcher, label=label),
                              in_call_of(on_event),
                              threshold=threshold, min_speech=min_speech,
                              min_silence=min_silence)

    return make_silero, batcher


@dataclass
class Backends:
    """STT, LLM and TTS providers (each a failover chain) plus the per-call VAD factory, the
    user tools and the speech cache."""

    stt: STT
    llm: LLM
    tts: TTS
    new_segmenter: SegmenterFactory
    vad_batcher: Any = None
    speech_cache: SpeechCache = field(default_factory=SpeechCache)
    tools: Any = None                              # backends.llm.tools.ToolRunner or None
    tool_specs: tuple[ToolSpec, ...] = ()
    supervisor: Supervisor = field(default_factory=Supervisor)   # the gateway's, in a daemon

    @classmethod
    async def from_config(cls, config: Config, on_error: ErrorSink | None = None, *,
                          supervisor: Supervisor | None = None) -> Backends:
        """Create and start the providers the config names; ``on_error(layer, provider,
        exc)`` hears of every provider failure (the daemon counts them); the shared workers
        (VAD batcher, decoder pools) report to ``supervisor``."""
        supervisor = supervisor or Supervisor()
        from ..backends import create_llm, create_stt, create_tts
        from ..backends.failover import FailoverLLM, FailoverSTT, FailoverTTS
        sink = on_error or (lambda layer, provider, exc: None)
        stt_chain = [create_stt(c, config.agent, llm=config.llm) for c in config.stt.chain]
        stt = FailoverSTT(stt_chain, on_error=sink,
                          timeouts=[c.timeout or DEFAULT_STT_TIMEOUT for c in config.stt.chain])
        tts_chain = [create_tts(c, config.agent) for c in config.tts.chain]
        last_resort = None
        if all(c.provider != "espeak" for c in config.tts.chain):
            last_resort = create_tts(BackendConfig("espeak"), config.agent)
        tts = FailoverTTS(tts_chain, last_resort=last_resort, on_error=sink)
        llm = FailoverLLM([create_llm(c, config.agent) for c in config.llm.chain],
                          on_error=sink)
        for layer in (stt, tts):   # before start: the decoder pool reports from birth
            _supervise_providers(layer, supervisor)
        await stt.start()
        await tts.start()   # a wrong voice fails here, at start-up, not on the first call
        segmenter, batcher = default_segmenter(config, supervisor)
        runner = None
        if config.llm.tools:
            from ..backends.llm.tools import ToolRunner
            runner = ToolRunner(config.llm.tools)
        return cls(stt=stt, llm=llm, tts=tts, new_segmenter=segmenter, vad_batcher=batcher,
                   tools=runner, tool_specs=tool_specs(config.agent.transfer_targets, runner),
                   supervisor=supervisor)

    def supervise(self, supervisor: Supervisor) -> None:
        """Make ``supervisor`` (the gateway's) the keeper of every shared worker behind these
        backends: the VAD batcher and the providers with workers of their own (the
        pocketsphinx decoder pool, the espeak engine)."""
        self.supervisor = supervisor
        if self.vad_batcher is not None:
            self.vad_batcher.supervisor = supervisor
        for layer in (self.stt, self.tts):
            _supervise_providers(layer, supervisor)

    async def close(self) -> None:
        """Release every provider."""
        for backend in (self.stt, self.llm, self.tts):
            await backend.close()
        if self.tools is not None:
            await self.tools.close()
        if self.vad_batcher is not None:
            await self.vad_batcher.aclose()


def _supervise_providers(layer: Any, supervisor: Supervisor) -> None:
    """Hand ``supervisor`` to each provider of a layer (a failover chain's members and its
    last resort, or the layer itself) that has shared workers (a ``supervise`` method)."""
    last = getattr(layer, "last_resort", None)
    for provider in [layer, *getattr(layer, "providers", ()), *([last] if last else [])]:
        bind = getattr(provider, "supervise", None)
        if callable(bind):
            bind(supervisor)
