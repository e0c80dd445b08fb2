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

The pool is supervised (component ``pocketsphinx``): a decoder process that exits (killed,
crashed), answers garbage or is interrupted midway is replaced at once — the utterance it held
is tried once more on another process when the process died, else it fails (the call
apologises); a replacement that cannot start is retried with back-off, and while no decoder
process is alive the provider is reported down (``/readyz`` 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...ops.supervise import Supervisor
from .base import STT, UtteranceStream
from .sphinx_vocab import build_model, model_paths, sound_alike

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

log = logging.getLogger(__name__)

MAX_UTTERANCE_SECONDS = 30.0      # older audio of a longer utterance is dropped
WORKER_START_TIMEOUT = 60.0
MAX_ANSWER_BYTES = 64 * 1024      # 30 s of speech is a few hundred bytes of text
COMPONENT = "pocketsphinx"        # the supervisor's name for the decoder pool
RESPAWN_FIRST = 0.5               # seconds before retrying a replacement that failed to start
RESPAWN_MAX = 30.0


class DecoderGarbage(RuntimeError):
    """A decoder process answered something that is not a transcript (it is replaced)."""


class _Worker:
    """One decoder process (see :mod:`.sphinx_worker`)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, decoder_args: dict[str, Any]) -> "_Worker":
        """Start a worker and wait until its decoder is loaded."""
        root = str(Path(__file__).resolve().parents[3])     # the directory holding patterd/
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        # A session of its own: Ctrl+C in the terminal signals the whole foreground process
        # group, and the daemon's drain still needs its decoders. The worker exits when its
        # stdin closes: on close(), and when the daemon dies, however it dies.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "patterd.backends.stt.sphinx_worker", json.dumps(decoder_args),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            start_new_session=True)
        worker = cls(proc)
        try:
            assert proc.stdout is not None
            ready = await asyncio.wait_for(proc.stdout.read(1), WORKER_START_TIMEOUT)
        except BaseException:
            worker.kill()
            with contextlib.suppress(BaseException):
                await asyncio.shield(proc.wait())       # reap it before reporting
            raise
        if ready != b"R":
            worker.kill()
            raise RuntimeError("pocketsphinx: the decoder process failed to start "
                               f"(exit code {await proc.wait()}; see its stderr)")
        return worker

    async def decode(self, pcm: bytes) -> str:
        """One request/answer round trip."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(len(pcm).to_bytes(4, "little") + pcm)
        await self.proc.stdin.drain()
        n = int.from_bytes(await self.proc.stdout.readexactly(4), "little")
        if n > MAX_ANSWER_BYTES:
            raise DecoderGarbage(f"pocketsphinx: the decoder announced a {n}-byte answer")
        try:
            return (await self.proc.stdout.readexactly(n)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecoderGarbage(f"pocketsphinx: the decoder answered non-UTF-8 ({exc})") \
                from None

    def kill(self) -> None:
        """Kill the process now (reaped by whoever awaits ``proc.wait()``)."""
        if self.proc.returncode is None:
            self.proc.kill()

    async def stop(self) -> None:
        """End of input: the worker exits; killed if it does not within 5 s."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except asyncio.TimeoutError:
            self.kill()
            await self.proc.wait()


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
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()                 # live decoder processes of the pool
        self._tasks: set[asyncio.Future[None]] = set()  # replacements and exit watchers
        self.supervisor = Supervisor()                  # the daemon's, once supervise() ran
        self.replaced = 0                               # decoder processes replaced
        self._closed = False
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.decoder_args: dict[str, Any] = {}
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Build the dictionary and language model and start the decoder processes."""
        self._closed = False
        async with self._start_lock:
            if self._idle is not None:
                return
            if not self.decoder_args:
                await asyncio.to_thread(self._prepare)
            workers = await asyncio.gather(
                *(_Worker.spawn(self.decoder_args) for _ in range(self._workers)),
                return_exceptions=True)
            errors = [w for w in workers if isinstance(w, BaseException)]
            started = [w for w in workers if isinstance(w, _Worker)]
            if errors:
                for w in started:
                    await w.stop()
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

    def _prepare(self) -> None:
        hmm, cmudict, general_lm = model_paths()
        self._tmp = tempfile.TemporaryDirectory(prefix="patterd-stt-")
        built = build_model(self.phrases, self.messages, self._tmp.name, cmudict)
        if built is None:
            log.info("pocketsphinx: no vocabulary configured; using the general English model")
            self.decoder_args = {"hmm": hmm, "dict": cmudict, "lm": general_lm}
            return
        self.skipped = built.skipped
        if self.skipped:
            log.warning("pocketsphinx: no pronunciation for %s; these words cannot be "
                        "recognised", ", ".join(self.skipped))
        self.homophones = sound_alike(self._groups, built.pronunciations)
        for a, b in self.homophones:
            log.warning("pocketsphinx: rule phrases %r and %r sound the same; the recogniser "
                        "cannot tell them apart", a, b)
        self.decoder_args = {"hmm": hmm, "dict": built.dict_path, "lm": built.lm_path}

    async def decode(self, pcm_s16le_8khz: bytes) -> str:
        """Recognise one whole utterance in an idle decoder process.

        A worker that dies is replaced and the utterance tried once more on another; one that
        answers garbage is replaced and the utterance fails; one whose request is cancelled
        midway is replaced too (its answer would be out of step).
        """
        for attempt in (1, 2):
            if self._closed:
                raise RuntimeError("the pocketsphinx STT provider is closed")
            if self._idle is None:
                await self.start()
            idle = self._idle
            assert idle is not None
            worker = await self._take(idle)
            try:
                text = await worker.decode(pcm_s16le_8khz)
            except BaseException as exc:
                died = isinstance(exc, (OSError, asyncio.IncompleteReadError))
                cancelled = isinstance(exc, asyncio.CancelledError)
                self._retire(idle, worker, None if cancelled else exc)
                if died and attempt == 1:
                    log.error("pocketsphinx: decoder process failed (%r); retrying", exc)
                    continue
                raise
            idle.put_nowait(worker)
            return text
        raise AssertionError("unreachable")

    async def _take(self, idle: "asyncio.Queue[_Worker]") -> _Worker:
        """An idle worker that is still alive (one that exited while idle is skipped: its
        watcher replaces it)."""
        while True:
            worker = await idle.get()
            if worker in self._all and worker.proc.returncode is None:
                return worker

    def _watch(self, idle: "asyncio.Queue[_Worker]", worker: _Worker) -> None:
        """Replace ``worker`` as soon as its process exits, busy or idle."""
        async def watch() -> None:
            code = await worker.proc.wait()
            self._retire(idle, worker, f"decoder process exited (code {code})")
        self._track(asyncio.ensure_future(watch()))

    def _track(self, task: "asyncio.Future[None]") -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _retire(self, idle: "asyncio.Queue[_Worker]", worker: _Worker,
                why: BaseException | str | None) -> None:
        """Take ``worker`` out of the pool (once), kill it and start its replacement.
        ``why`` is reported (None: a cancelled request, which is no failure)."""
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

    async def _replace(self, idle: "asyncio.Queue[_Worker]", dead: _Worker) -> None:
        """Start a decoder in place of ``dead``; retried with back-off until it starts or
        the provider closes (the pool never shrinks for good)."""
        await dead.proc.wait()
        delay = RESPAWN_FIRST
        while True:
            try:
                worker = await _Worker.spawn(self.decoder_args)
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
        """Stop the decoder processes (utterances being decoded still finish) and delete the
        generated model files. Later decodes fail; :meth:`start` may open the provider again."""
        self._closed = True
        workers, self._all, self._idle = self._all, set(), None
        for task in list(self._tasks):   # replacements (a starting one is reaped) and watchers
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in workers))
        self.supervisor.mark_up(COMPONENT)    # a closed provider is not a worker down
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.decoder_args = {}


class PocketsphinxStream(UtteranceStream):
    """One call's utterance buffer; each :meth:`finalize` decodes it in a worker process."""

    def __init__(self, provider: PocketsphinxSTT) -> None:
        super().__init__(max_seconds=MAX_UTTERANCE_SECONDS)
        self._provider = provider

    async def recognise(self, audio: bytes) -> str:
        """Decode the utterance in an idle worker ("" for no audio)."""
        return await self._provider.decode(audio) if audio else ""


__all__ = ["PocketsphinxSTT", "PocketsphinxStream"]
