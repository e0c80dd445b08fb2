"""The speech and language backends one process shares between its calls."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..audio.segmenter import SpeechEvent, SpeechSegmenter, TurnGate
from ..backends.failover import ErrorSink
from ..backends.llm.base import LLM, ToolSpec
from ..backends.stt.base import STT
from ..backends.tts.base import TTS
from ..config import Config
from ..config.backends import TURN_MODEL_DEFAULT, TURN_MODEL_OFF, VAD_DEFAULTS
from ..config.model import BackendConfig
from ..ops.logging import get_logger
from ..ops.supervise import Supervisor
from ..ops.trace import in_call_of
from .conversation import tool_specs
from .turns import SpeechCache

log = get_logger("patterd.backends")

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

    With ``vad.turn_model`` on (the default) every segmenter also asks the shared end-of-turn
    model (:class:`~patterd.audio.batch_turn.TurnBatcher`, the factory's ``turn_batcher``)
    whether the caller has finished, once they have been silent for ``turn_silence``.

    A segmenter either returns its events from ``feed`` (energy VAD) or hands them to the
    ``on_event`` callback once its windows are scored (batched Silero) or once the turn
    model's verdict ends the turn."""
    opts = {**VAD_DEFAULTS, **config.vad.options}
    threshold = float(opts["threshold"])
    min_speech = float(opts["min_speech"])
    min_silence = float(opts["min_silence"])
    turn = turn_gate(opts, supervisor)

    def label_of(on_event: Callable[[SpeechEvent], None], label: str | None) -> str:
        if label is None:   # a session's bound method: its call id names the stream
            label = str(getattr(getattr(on_event, "__self__", None), "call_id", "") or "")
        return label

    factory: Any
    batcher: Any = None
    if config.vad.provider == "energy":
        from ..audio.vad import EnergyVad

        def make_energy(on_event: Callable[[SpeechEvent], None], *,
                        label: str | None = None) -> SpeechSegmenter:
            return SpeechSegmenter(EnergyVad(), threshold=threshold, min_speech=min_speech,
                                   min_silence=min_silence, turn=turn, on_turn_end=on_event,
                                   label=label_of(on_event, label))

        factory = make_energy
    else:
        from ..audio.batch_vad import AsyncSegmenter, BatchedVadStream, VadBatcher
        batcher = VadBatcher(supervisor=supervisor)

        def make_silero(on_event: Callable[[SpeechEvent], None], *,
                        label: str | None = None) -> SpeechSegmenter:
            stream = BatchedVadStream(batcher=batcher, label=label_of(on_event, label))
            # The batcher's loop calls back: the events belong to the call making the segmenter.
            return AsyncSegmenter(stream, in_call_of(on_event), threshold=threshold,
                                  min_speech=min_speech, min_silence=min_silence, turn=turn)

        factory = make_silero
    factory.turn_batcher = turn.batcher if turn else None
    return factory, batcher


def turn_gate(opts: Mapping[str, Any], supervisor: Supervisor | None) -> TurnGate | None:
    """The shared end-of-turn model the ``vad`` options ask for, or None (``turn_model``
    off)."""
    name = str(opts.get("turn_model") or TURN_MODEL_DEFAULT)
    if name == TURN_MODEL_OFF:
        return None
    from ..audio.batch_turn import TurnBatcher
    from ..audio.turn_model import SmartTurnModel, smart_turn_path
    if name == TURN_MODEL_DEFAULT:
        try:
            smart_turn_path()
        except FileNotFoundError as exc:   # pip install without the `turn` extra: still a daemon
            log.warning("turn_model_unavailable", reason=str(exc),
                        detail="turns end on silence alone (vad.min_silence); install "
                               "patterd[turn] or set vad.turn_model: false to silence this")
            return None
    model = SmartTurnModel.get(None if name == TURN_MODEL_DEFAULT else name)
    batcher = TurnBatcher(model, cpu_share=float(opts["turn_cpu_share"]),
                          supervisor=supervisor)
    return TurnGate(batcher, short=float(opts["turn_silence"]),
                    long=float(opts["turn_max_silence"]),
                    threshold=float(opts["turn_threshold"]))


@dataclass
class Backends:
    """STT, LLM and TTS providers (each a failover chain) plus the per-call VAD factory (with
    the shared VAD and end-of-turn batchers behind it), the user tools and the speech cache."""

    stt: STT
    llm: LLM
    tts: TTS
    new_segmenter: SegmenterFactory
    vad_batcher: Any = None
    speech_cache: SpeechCache = field(default_factory=SpeechCache)
    tools: Any = None                              # backends.llm.tools.ToolRunner or None
    tool_specs: tuple[ToolSpec, ...] = ()
    supervisor: Supervisor = field(default_factory=Supervisor)   # the gateway's, in a daemon
    turn_batcher: Any = None     # the end-of-turn model's; default: the segmenter factory's

    def __post_init__(self) -> None:
        if self.turn_batcher is None:
            self.turn_batcher = getattr(self.new_segmenter, "turn_batcher", None)

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
        pocketsphinx decoder pool, the espeak engine) and the end-of-turn model's batcher."""
        self.supervisor = supervisor
        for batcher in (self.vad_batcher, self.turn_batcher):
            if batcher is not None:
                batcher.supervisor = supervisor
        for layer in (self.stt, self.tts):
            _supervise_providers(layer, supervisor)

    async def close(self) -> None:
        """Release every provider."""
        for backend in (self.stt, self.llm, self.tts):
            await backend.close()
        if self.tools is not None:
            await self.tools.close()
        for batcher in (self.vad_batcher, self.turn_batcher):
            if batcher is not None:
                await batcher.aclose()


def _supervise_providers(layer: Any, supervisor: Supervisor) -> None:
    """Hand ``supervisor`` to each provider of a layer (a failover chain's members and its
    last resort, or the layer itself) that has shared workers (a ``supervise`` method)."""
    last = getattr(layer, "last_resort", None)
    for provider in [layer, *getattr(layer, "providers", ()), *([last] if last else [])]:
        bind = getattr(provider, "supervise", None)
        if callable(bind):
            bind(supervisor)
