"""Offline TTS: libespeak-ng through ctypes.

The library and its data come from the ``espeakng-loader`` wheel; without it, a system
``libespeak-ng.so.1`` (found with :func:`ctypes.util.find_library`) with its default data path.

libespeak-ng is a process-global and not thread-safe, so one :class:`_Engine` per process owns it:
one worker thread runs every ``espeak_Synth`` call, one at a time. The synth callback gets 22050 Hz
s16 audio in small buffers, resamples it (stateful) to 8 kHz and hands it to the event loop as it
is produced, so the first chunk arrives long before the sentence is done. Cancelling makes the
callback return 1, which aborts synthesis inside the library.

espeak runs about a thousand times faster than real time, so texts queue behind each other only
briefly. Up to 60 s of audio per text is buffered for a reader that plays it out in real time;
beyond that the engine waits for the reader (and gives up on one that stalls for 2 minutes) —
but only while no other text waits for the engine: one call's long text never holds up another
call's speech. Then the text is buffered whole (up to 10 minutes of audio; a longer one is cut
there). The engine is one process-wide worker: what goes wrong with one text (an error, a reader
abandoned) is reported to the daemon's supervisor (component ``espeak``) and ends that text only.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ...audio.resample import Resampler
from ...ops.supervise import Supervisor
from .base import SAMPLE_RATE, TTS, SpeechStream

if TYPE_CHECKING:
    from ...config.model import AgentConfig, BackendConfig

log = logging.getLogger(__name__)

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_CHARS_UTF8 = 1
POS_CHARACTER = 1
ESPEAK_RATE = 1
INITIALIZE_DONT_EXIT = 0x8000
BUFFER_MS = 40          # size of the buffers espeak hands the callback
MAX_BUFFERED = SAMPLE_RATE * 2 * 60   # bytes of 8 kHz audio held for a slow reader before waiting
HARD_MAX_BUFFERED = SAMPLE_RATE * 2 * 600   # held while other texts wait; a longer text is cut
STALL_SECONDS = 120.0  # a reader that takes nothing for this long (buffer full) is abandoned
COMPONENT = "espeak"   # the supervisor's name for the engine
DEFAULT_VOICE = "en-us"
DEFAULT_RATE = 175

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.c_void_p)


def _load_library() -> tuple[ctypes.CDLL, str | None]:
    """libespeak-ng and its data path (None: the library's compiled-in default)."""
    try:
        import espeakng_loader
        return ctypes.CDLL(espeakng_loader.get_library_path()), espeakng_loader.get_data_path()
    except (ImportError, OSError, RuntimeError) as exc:
        found = ctypes.util.find_library("espeak-ng")
        if not found:
            raise RuntimeError("espeak TTS: libespeak-ng not found; install the espeakng-loader "
                               "package or the system libespeak-ng1") from exc
        log.info("espeak TTS: espeakng-loader unavailable (%s); using %s", exc, found)
        return ctypes.CDLL(found), None


class _Job:
    """One synthesis: bridges the espeak thread to the asyncio consumer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, text: str, voice: str, rate: int,
                 supervisor: Supervisor | None = None) -> None:
        self.loop = loop
        self.text = text
        self.voice = voice
        self.rate = rate
        self.supervisor = supervisor
        self.queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.room = threading.Condition()
        self.buffered = 0
        self.produced = 0
        self.resampler: Resampler | None = None
        self.others_waiting: Any = lambda: False   # set by the engine: texts queued behind

    def deliver(self, item: bytes | BaseException | None) -> None:
        """From the espeak thread: queue an item for the consumer (dropped if the loop is gone)."""
        if isinstance(item, bytes):
            with self.room:
                deadline = time.monotonic() + STALL_SECONDS
                while self.buffered >= MAX_BUFFERED and not self.cancelled.is_set():
                    if self.others_waiting():   # never hold other calls' texts for this reader
                        if self.buffered < HARD_MAX_BUFFERED:
                            break
                        self.abort(f"text longer than {HARD_MAX_BUFFERED // 16000} s of audio "
                                   "for a slow reader while other texts waited; cut there")
                    elif time.monotonic() > deadline:   # abandoned: free the engine
                        self.abort(f"reader stalled for {STALL_SECONDS:g} s; synthesis aborted")
                    else:
                        self.room.wait(0.1)
                self.buffered += len(item)
                self.produced += len(item)
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:        # event loop closed: nobody is listening any more
            self.cancelled.set()

    def abort(self, why: str) -> None:
        """From the espeak thread: give up on this text (the engine moves on) and report it."""
        log.warning("espeak TTS: %s", why)
        self.cancelled.set()
        self.report(why)

    def report(self, why: BaseException | str) -> None:
        """Tell the daemon's supervisor, on the loop's thread (never raises)."""
        if self.supervisor is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.supervisor.report, COMPONENT, why)
        except RuntimeError:        # the loop is closed
            pass

    def consumed(self, n: int) -> None:
        """From the loop: ``n`` bytes were handed to the reader."""
        with self.room:
            self.buffered -= n
            self.room.notify()


class _Engine:
    """The process-wide libespeak-ng, driven from one worker thread."""

    _instance: "_Engine | None" = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls) -> "_Engine":
        """The process's engine (created on first use; libespeak-ng is loaded lazily)."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        self.lock = threading.Lock()
        self.queued = 0                  # texts handed to the executor, not started yet
        self._queued_lock = threading.Lock()
        self.lib: ctypes.CDLL | None = None
        self.rate_hz = 0
        self.voice = ""
        self.job: _Job | None = None
        self._callback = _SynthCallback(self._on_audio)   # kept alive as long as the engine

    def _init(self) -> None:
        lib, data = _load_library()
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS,
                                     data.encode() if data else None, INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak TTS: espeak_Initialize failed (data path {data!r})")
        lib.espeak_SetSynthCallback(self._callback)
        self.lib, self.rate_hz = lib, rate

    def warm_up(self) -> None:
        """Load the library in the worker thread (raises if it cannot be loaded)."""
        with self.lock:
            if self.lib is None:
                self._init()

    def set_voice(self, voice: str) -> None:
        """Check that ``voice`` exists (in the worker thread)."""
        with self.lock:
            if self.lib is None:
                self._init()
            assert self.lib is not None
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak TTS: unknown voice {voice!r}")
            self.voice = voice

    def ipa(self, words: list[str], voice: str) -> list[str]:
        """Each word's pronunciation in IPA, as espeak would say it (in the worker thread)."""
        self.set_voice(voice)
        assert self.lib is not None
        convert = self.lib.espeak_TextToPhonemes
        convert.restype = ctypes.c_char_p
        convert.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        out: list[str] = []
        with self.lock:
            for word in words:
                text, parts = ctypes.c_char_p(word.encode("utf-8")), []
                while text.value:
                    parts.append((convert(ctypes.byref(text), ESPEAK_CHARS_UTF8, 2) or b"")
                                 .decode("utf-8", "replace"))
                out.append(" ".join(parts))
        return out

    def submit(self, job: _Job) -> asyncio.Future[None]:
        """Queue ``job`` on the engine's thread (from the loop)."""
        with self._queued_lock:
            self.queued += 1
        job.others_waiting = lambda: self.queued > 0
        return job.loop.run_in_executor(self.executor, self.run, job)

    def run(self, job: _Job) -> None:
        """Synthesise one job (in the worker thread); always ends the job's stream."""
        with self._queued_lock:
            self.queued -= 1
        error: BaseException | None = None
        try:
            with self.lock:
                if self.lib is None:
                    self._init()
                assert self.lib is not None
                if job.cancelled.is_set():
                    return
                if job.voice != self.voice:
                    if self.lib.espeak_SetVoiceByName(job.voice.encode()) != 0:
                        raise ValueError(f"espeak TTS: unknown voice {job.voice!r}")
                    self.voice = job.voice
                self.lib.espeak_SetParameter(ESPEAK_RATE, job.rate, 0)
                job.resampler = Resampler(self.rate_hz, SAMPLE_RATE)
                text = job.text.encode("utf-8") + b"\0"
                self.job = job
                try:
                    self.lib.espeak_Synth(text, len(text), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8,
                                          None, None)
                finally:
                    self.job = None
                if not job.cancelled.is_set():
                    tail = job.resampler.flush()
                    if tail:
                        job.deliver(tail[: len(tail) & ~1])
        except BaseException as exc:     # handed to the reader, never lost in the thread
            error = exc
            job.report(exc)
        finally:
            job.deliver(error)

    def _on_audio(self, wav: Any, numsamples: int, events: Any) -> int:
        """espeak's synth callback: 0 to go on, 1 to abort."""
        job = self.job
        if job is None or job.cancelled.is_set():
            return 1
        if numsamples > 0 and wav:
            pcm = ctypes.string_at(wav, numsamples * 2)
            assert job.resampler is not None
            out = job.resampler.process(pcm)
            if out:
                job.deliver(out)
        return 1 if job.cancelled.is_set() else 0


class _EspeakStream(SpeechStream):
    def __init__(self, engine: _Engine, job: _Job) -> None:
        self._job = job
        self._done = False
        self._future = engine.submit(job)

    async def __anext__(self) -> bytes:
        while not self._done:
            if self._job.cancelled.is_set():
                self._done = True
                break
            item = await self._job.queue.get()
            if item is None:
                self._done = True
            elif isinstance(item, BaseException):
                self._done = True
                raise item
            else:
                self._job.consumed(len(item))
                if not self._job.cancelled.is_set():
                    return item
        raise StopAsyncIteration

    @property
    def finished(self) -> bool:
        """True once the engine is done with this text (spoken to the end, cancelled or failed)."""
        return self._future.done()

    @property
    def produced_bytes(self) -> int:
        """How much 8 kHz PCM the engine has produced for this text so far."""
        return self._job.produced

    def cancel(self) -> None:
        """Make the synth callback abort; the iteration ends at the next ``__anext__``."""
        self._job.cancelled.set()
        with self._job.room:
            self._job.room.notify_all()

    async def aclose(self) -> None:
        """Cancel and wait until the engine has let go of this text."""
        self.cancel()
        self._done = True
        await asyncio.shield(self._future)   # the engine is free again once this returns

    def __del__(self) -> None:               # an abandoned stream must not hold the engine
        self._job.cancelled.set()


class EspeakTTS(TTS):
    """eSpeak NG voice. Options: ``voice`` (the backend's ``voice`` key, e.g. ``en-us``) and
    ``rate`` in words per minute (default 175)."""

    name = "espeak"

    def __init__(self, cfg: BackendConfig, agent: AgentConfig | None = None) -> None:
        self.voice = cfg.voice or str(cfg.options.get("voice") or DEFAULT_VOICE)
        self.rate = int(cfg.options.get("rate") or DEFAULT_RATE)
        self._engine = _Engine.get()
        self._supervisor: Supervisor | None = None

    def supervise(self, supervisor: Supervisor) -> None:
        """Report the engine's failures with this provider's texts to ``supervisor``."""
        self._supervisor = supervisor

    async def start(self) -> None:
        """Load libespeak-ng and check the voice, so a bad setup fails at start-up."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._engine.executor, self._engine.set_voice, self.voice)

    def synthesize(self, text: str, encoding: str = "PCM16") -> SpeechStream:
        """Speak ``text``: s16le 8 kHz PCM chunks of ~40 ms, streamed as espeak produces them."""
        job = _Job(asyncio.get_running_loop(), text, self.voice, self.rate, self._supervisor)
        return _EspeakStream(self._engine, job)


def pronounce_ipa(words: list[str], voice: str = DEFAULT_VOICE) -> list[str]:
    """Blocking: ``words`` in IPA by espeak's letter-to-sound rules (a grapheme-to-phoneme
    fallback for the offline STT). Runs on the engine's thread; never call it from the loop."""
    engine = _Engine.get()
    return engine.executor.submit(engine.ipa, words, voice).result()


__all__ = ["EspeakTTS", "pronounce_ipa"]
