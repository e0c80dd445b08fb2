"""Offline STT: CMU PocketSphinx 5 with a small vocabulary built at start-up.

:meth:`PocketsphinxSTT.start` builds the dictionary and language model of the rule phrases,
``stt.vocabulary`` and the agent's messages (see :mod:`.sphinx_vocab`); with no vocabulary at all
the general English model of the wheel is used.

Audio: a call's 8 kHz PCM is collected per utterance; :meth:`PocketsphinxStream.finalize` hands it
to an idle decoder *process* (:mod:`.sphinx_worker`), which upsamples it to the model's 16 kHz,
pads and decodes it. Processes, not threads: pocketsphinx holds the GIL while it decodes (its
second pass alone would stall the event loop for ~25 ms per second of speech), and processes use
every core. They are plain subprocesses talking over pipes, so no ``multiprocessing`` main-module
guard is needed. Only final transcripts are produced.

The exchange with a decoder process (request, answer) runs in a task of its own, shielded from
its caller: a caller that is cancelled (its call ended mid-word) abandons the answer, and the
process finishes the utterance and goes back to the pool — calls ending never cost a decoder.

The pool is supervised (component ``pocketsphinx``): a decoder process that exits (killed,
crashed) or answers garbage is replaced at once — the utterance it held is tried once more on
another process when the process died, else it fails (the call apologises); a replacement that
cannot start is retried with back-off, and while no decoder process is alive the provider is
reported down (``/readyz`` 503).

:meth:`PocketsphinxSTT.close` lets the utterances being decoded finish (for ``CLOSE_GRACE``
seconds), then stops the processes; every wait of it is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from typing import TYPE_CHECKING, Any

from ...ops.supervise import Supervisor
from .base import STT, UtteranceStream
from . import sphinx_proc
from .sphinx_proc import DecoderProcess
from .sphinx_vocab import build_model, model_paths, sound_alike

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

log = logging.getLogger(__name__)

MAX_UTTERANCE_SECONDS = 30.0      # older audio of a longer utterance is dropped
COMPONENT = "pocketsphinx"        # the supervisor's name for the decoder pool
RESPAWN_FIRST = 0.5               # seconds before retrying a replacement that failed to start
RESPAWN_MAX = 30.0
CLOSE_GRACE = 10.0                # seconds close() lets the utterances being decoded finish


class PocketsphinxSTT(STT):
    """The offline recogniser. Options: ``vocabulary`` (extra phrases to recognise).

    ``llm`` is the ``llm:`` section, whose rules give the vocabulary. ``workers`` decoder
    processes (default: one per core, at most 4) serve every call of the daemon.
    """

    name = "pocketsphinx"

    def __init__(self, cfg: "BackendConfig", agent: "AgentConfig | None" = None,
                 llm: "BackendConfig | None" = None, *, workers: int | None = None) -> None:
        rules = tuple(cfg.rules) + (tuple(llm.rules) if llm is not None else ())
        self.phrases: list[str] = [p for r in rules for p in r.phrases]
        self.phrases += [str(p) for p in cfg.options.get("vocabulary", ())]
        messages = [r.reply for r in rules]
        if llm is not None and llm.fallback:
            messages.append(llm.fallback)
        if agent is not None:
            messages += [agent.first_message, agent.voicemail_message]
        self.messages = [m for m in messages if m]
        self.skipped: list[str] = []
        self.homophones: list[tuple[str, str]] = []
        self._groups = [list(r.phrases) for r in rules]
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)   # a daemon pinned to one core decodes on that core
        self._workers = workers or min(4, usable)
        # The open pool: its idle queue (None: not started, or closed) and live processes.
        # A close replaces both, so work of an older pool never lands in a newer one.
        self._idle: asyncio.Queue[DecoderProcess | None] | None = None
        self._all: set[DecoderProcess] = set()
        self._tasks: set[asyncio.Future[None]] = set()  # replacements and exit watchers
        self._busy: set[asyncio.Future[str]] = set()    # exchanges with a decoder in flight
        self.supervisor = Supervisor()                  # the daemon's, once supervise() ran
        self.replaced = 0                               # decoder processes replaced
        self._closed = False
        self._generation = 0                            # closes so far: a start older fails
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.decoder_args: dict[str, Any] = {}
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Build the dictionary and language model and start the decoder processes. Opens a
        closed provider again; fails if :meth:`close` is called before it is done."""
        await self._open(self._generation, explicit=True)

    async def _open(self, generation: int, *, explicit: bool) -> None:
        """Start the pool unless it runs (one start at a time). ``explicit``: a start asked
        for (it reopens a closed provider), else the first decode's (it does not)."""
        async with self._start_lock:
            if generation != self._generation:
                raise RuntimeError("the pocketsphinx STT provider was closed while starting")
            if explicit:
                self._closed = False
            elif self._closed:
                raise RuntimeError("the pocketsphinx STT provider is closed")
            if self._idle is not None:
                return
            if not self.decoder_args:
                tmp, args = await asyncio.to_thread(self._prepare)
                if generation != self._generation:      # closed meanwhile: nothing to keep
                    if tmp is not None:
                        tmp.cleanup()
                    raise RuntimeError("the pocketsphinx STT provider was closed while "
                                       "starting")
                self._tmp, self.decoder_args = tmp, args
            workers = await asyncio.gather(
                *(DecoderProcess.spawn(self.decoder_args) for _ in range(self._workers)),
                return_exceptions=True)
            errors = [w for w in workers if isinstance(w, BaseException)]
            started = [w for w in workers if isinstance(w, DecoderProcess)]
            if errors or generation != self._generation:
                await asyncio.gather(*(w.stop() for w in started))
                if generation != self._generation:     # (its model files may be gone too)
                    raise RuntimeError("the pocketsphinx STT provider was closed while "
                                       "starting")
                raise errors[0]
            self._all = set(started)
            self._idle = asyncio.Queue()
            for w in started:
                self._idle.put_nowait(w)
                self._watch(self._idle, w)
            self.supervisor.mark_up(COMPONENT)

    def supervise(self, supervisor: Supervisor) -> None:
        """Report the pool's failures to ``supervisor`` (the daemon's)."""
        self.supervisor = supervisor

    def _prepare(self) -> tuple[tempfile.TemporaryDirectory[str] | None, dict[str, Any]]:
        """Blocking: the model files (in a new temporary directory) and the decoder args."""
        hmm, cmudict, general_lm = model_paths()
        tmp = tempfile.TemporaryDirectory(prefix="patterd-stt-")
        built = build_model(self.phrases, self.messages, tmp.name, cmudict)
        if built is None:
            log.info("pocketsphinx: no vocabulary configured; using the general English model")
            tmp.cleanup()
            return None, {"hmm": hmm, "dict": cmudict, "lm": general_lm}
        self.skipped = built.skipped
        if self.skipped:
            log.warning("pocketsphinx: no pronunciation for %s; these words cannot be "
                        "recognised", ", ".join(self.skipped))
        self.homophones = sound_alike(self._groups, built.pronunciations)
        for a, b in self.homophones:
            log.warning("pocketsphinx: rule phrases %r and %r sound the same; the recogniser "
                        "cannot tell them apart", a, b)
        return tmp, {"hmm": hmm, "dict": built.dict_path, "lm": built.lm_path}

    async def decode(self, pcm_s16le_8khz: bytes) -> str:
        """Recognise one whole utterance in an idle decoder process.

        A worker that dies is replaced and the utterance tried once more on another; one that
        answers garbage is replaced and the utterance fails. Cancelling the caller abandons
        the answer only: the exchange goes on, and the worker back to the pool once done.
        """
        died_once = False
        while True:
            if self._closed:
                raise RuntimeError("the pocketsphinx STT provider is closed")
            if self._idle is None:
                await self._open(self._generation, explicit=False)
            idle = self._idle
            if idle is None:            # closed (and maybe opened again) meanwhile
                continue
            worker = await self._take(idle)
            if worker is None:          # that pool closed while this waited for a worker
                continue
            exchange = asyncio.ensure_future(self._exchange(idle, worker, pcm_s16le_8khz))
            self._busy.add(exchange)
            exchange.add_done_callback(self._exchange_done)
            try:
                return await asyncio.shield(exchange)
            except (OSError, asyncio.IncompleteReadError) as exc:   # the process died
                if died_once:
                    raise
                died_once = True
                log.error("pocketsphinx: decoder process failed (%r); retrying", exc)

    async def _exchange(self, idle: "asyncio.Queue[DecoderProcess | None]", worker: DecoderProcess,
                        pcm: bytes) -> str:
        """One request/answer with ``worker``, then the worker back to its pool; a worker that
        failed is retired. Only :meth:`close` cancels an exchange (its process is killed and
        never went away): its caller gets :class:`ConnectionAbortedError`, as for a death."""
        try:
            text = await worker.decode(pcm)
        except asyncio.CancelledError:
            self._retire(idle, worker, None)
            raise ConnectionAbortedError("pocketsphinx: the decoder process was stopped "
                                         "mid-utterance (the provider closed)") from None
        except BaseException as exc:
            self._retire(idle, worker, exc)
            raise
        if idle is self._idle and worker in self._all:
            idle.put_nowait(worker)
        return text

    def _exchange_done(self, exchange: "asyncio.Future[str]") -> None:
        self._busy.discard(exchange)
        if not exchange.cancelled():
            exchange.exception()        # retrieved: a caller may have abandoned it

    async def _take(self, idle: "asyncio.Queue[DecoderProcess | None]") -> DecoderProcess | None:
        """An idle worker that is still alive (one that exited while idle is skipped: its
        watcher replaces it); None once the pool is closed."""
        while True:
            worker = await idle.get()
            if worker is None:
                idle.put_nowait(None)   # the next waiter learns it too
                return None
            if worker in self._all and worker.proc.returncode is None:
                return worker

    def _watch(self, idle: "asyncio.Queue[DecoderProcess | None]", worker: DecoderProcess) -> None:
        """Replace ``worker`` as soon as its process exits, busy or idle."""
        async def watch() -> None:
            code = await worker.proc.wait()
            self._retire(idle, worker, f"decoder process exited (code {code})")
        self._track(asyncio.ensure_future(watch()))

    def _track(self, task: "asyncio.Future[None]") -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _retire(self, idle: "asyncio.Queue[DecoderProcess | None]", worker: DecoderProcess,
                why: BaseException | str | None) -> None:
        """Take ``worker`` out of the pool (once), kill it and start its replacement.
        ``why`` is reported (None: no failure of the decoder's)."""
        if worker not in self._all:
            return                              # already retired, or the pool closed
        self._all.discard(worker)
        worker.kill()
        if why is not None:
            self.supervisor.report(COMPONENT, why, live=len(self._all))
        if not self._all:
            self.supervisor.mark_down(COMPONENT, "no decoder process")
        if not self._closed and idle is self._idle:
            self._track(asyncio.ensure_future(self._replace(idle, worker)))

    async def _replace(self, idle: "asyncio.Queue[DecoderProcess | None]",
                       dead: DecoderProcess) -> None:
        """Start a decoder in place of ``dead``; retried with back-off until it starts or
        the provider closes (the pool never shrinks for good)."""
        await dead.reap()
        delay = RESPAWN_FIRST
        while True:
            try:
                worker = await DecoderProcess.spawn(self.decoder_args)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:        # noqa: BLE001 - reported; tried again
                self.supervisor.report(COMPONENT, exc, detail="replacement failed to start",
                                       retry_in=delay, live=len(self._all))
            await asyncio.sleep(delay)
            delay = min(RESPAWN_MAX, delay * 2)
            if self._closed or idle is not self._idle:
                return
        if idle is self._idle and not self._closed:
            self._all.add(worker)
            self.replaced += 1
            idle.put_nowait(worker)
            self._watch(idle, worker)
            self.supervisor.mark_up(COMPONENT)
        else:                           # closed meanwhile
            await worker.stop()

    def open_stream(self, encoding: str = "PCM16") -> "PocketsphinxStream":
        """A recogniser for one call (the provider starts itself on first use if needed)."""
        return PocketsphinxStream(self)

    async def close(self) -> None:
        """Stop the decoder processes and delete the generated model files. Utterances being
        decoded still finish (for ``CLOSE_GRACE`` s; then their processes are stopped, and
        killed ``STOP_WAIT`` s later); decodes waiting for a process, and later ones, fail.
        :meth:`start` may open the provider again, even while this runs. Bounded: returns
        within about ``CLOSE_GRACE + STOP_WAIT + 3 * REAP_WAIT`` s (25 s)."""
        self._closed = True
        self._generation += 1                   # a start in progress fails
        workers, self._all = self._all, set()
        idle, self._idle = self._idle, None
        tmp, self._tmp, self.decoder_args = self._tmp, None, {}
        tasks, busy = list(self._tasks), list(self._busy)
        self.supervisor.mark_up(COMPONENT)      # a closed provider is not a worker down
        if idle is not None:
            idle.put_nowait(None)               # wakes the decodes waiting for a worker
        for task in tasks:                      # replacements (a starting one is reaped)
            task.cancel()                       # and exit watchers
        if tasks:
            await asyncio.wait(tasks, timeout=sphinx_proc.REAP_WAIT)
        if busy:                                # the utterances being decoded
            await asyncio.wait(busy, timeout=CLOSE_GRACE)
        await asyncio.gather(*(w.stop() for w in workers))
        if (left := [t for t in busy if not t.done()]):   # their processes are gone now
            for task in left:
                task.cancel()
            await asyncio.wait(left, timeout=sphinx_proc.REAP_WAIT)
        if tmp is not None:
            tmp.cleanup()


class PocketsphinxStream(UtteranceStream):
    """One call's utterance buffer; each :meth:`finalize` decodes it in a worker process."""

    def __init__(self, provider: PocketsphinxSTT) -> None:
        super().__init__(max_seconds=MAX_UTTERANCE_SECONDS)
        self._provider = provider

    async def recognise(self, audio: bytes) -> str:
        """Decode the utterance in an idle worker ("" for no audio)."""
        return await self._provider.decode(audio) if audio else ""


__all__ = ["PocketsphinxSTT", "PocketsphinxStream"]
