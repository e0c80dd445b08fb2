"""Local WAV recording of one call (``recording.local_dir``): caller left, agent right.

One timeline: the caller's audio (rx) is the clock, since carriers stream frames continuously,
silence included. An agent frame is placed at the rx position when it is sent, or right after
the previous agent frame when that one is still playing (the carrier plays them back to back);
silence fills the gaps. A ``clear`` (barge-in) drops agent audio placed beyond the rx position:
the carrier discarded it unheard. ``channels: dual`` gives a stereo file, ``mono`` the mix.

The media loop only appends payload bytes (the carrier's codec) to a buffer. Every second of
audio the batch goes to one writer thread shared by all calls, which decodes, lays out and
appends it to ``<local_dir>/<call id>.wav`` and then rewrites the header's sizes: a crash
leaves a valid file short of at most the last batch, and memory stays flat on long calls.
A write error (full disk…) stops that call's recording, is logged once, and never touches the
call. A stream that resumes a call (Twilio re-opens it after sending DTMF) appends to the file.

The writer thread is supervised (component ``recorder``): a failed batch — a write error or a
bug in one call's audio — stops only that call's recording and is reported once with its call
id; nothing one item does ends the thread, and a thread that ends anyway is replaced at once
(the queue it leaves is served by its successor).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import os
import queue
import re
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..audio.codecs import get_codec
from ..audio.resample import Resampler
from ..ops.logging import get_logger
from ..ops.supervise import Supervisor

log = get_logger("patterd.recorder")

RATE = 8000
BATCH_SECONDS = 1.0
MAX_PENDING_TX = 256        # agent frames held while no caller audio arrives (≈ 10 s)
CLOSE_TIMEOUT = 5.0         # a hung disk must not hold up the end of the call
COMPONENT = "recorder"      # the supervisor's name for the writer thread
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")   # the canonical 44-byte PCM WAV header
_MAX_DATA = 0xFFFFFFFF - 36                     # what a RIFF size field can describe
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def wav_name(call_id: str) -> str:
    """The file name for ``call_id``: only ``[A-Za-z0-9_-]``, so no id leaves the directory;
    a changed id gets a short hash of the original so that two ids never share a file."""
    safe = _UNSAFE.sub("_", call_id)[:120]
    if safe != call_id or not safe:
        safe = f"{safe or 'call'}-{hashlib.sha256(call_id.encode()).hexdigest()[:10]}"
    return safe + ".wav"


class WavFile:
    """A 16-bit 8 kHz PCM WAV written in pieces, its header sizes kept true after each."""

    def __init__(self, path: Path, channels: int, *, append: bool = False) -> None:
        self.channels = channels
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = _data_bytes(path, channels) if append else None
        self._f: BinaryIO
        if existing is None:
            self._f = open(path, "wb")  # noqa: SIM115 - kept open for the call
            self.data_bytes = 0
            self._f.write(self._header())
        else:  # continue the call's earlier stream; drop anything past its last good batch
            self._f = open(path, "r+b")  # noqa: SIM115
            self.data_bytes = existing
            self._f.seek(_HEADER.size + existing)
            self._f.truncate()
        self._f.flush()

    @property
    def frames(self) -> int:
        """Sample frames in the file."""
        return self.data_bytes // (2 * self.channels)

    def write(self, pcm: bytes) -> None:
        """Append interleaved s16le frames, then make the header say so."""
        if self.data_bytes + len(pcm) > _MAX_DATA:
            raise OSError(27, "the WAV file reached its 4 GiB limit")
        f = self._f
        f.write(pcm)
        f.flush()       # the audio first, so the header never claims what is not written
        self.data_bytes += len(pcm)
        fd = f.fileno()
        os.pwrite(fd, struct.pack("<I", 36 + self.data_bytes), 4)
        os.pwrite(fd, struct.pack("<I", self.data_bytes), 40)

    def close(self) -> None:
        """Close the file (its header is already up to date)."""
        self._f.close()

    def abandon(self) -> None:
        """After a failed write: cut the file back to what its header describes, close it."""
        try:
            os.ftruncate(self._f.fileno(), _HEADER.size + self.data_bytes)
        except OSError:
            pass
        try:
            self._f.close()     # closes the file even when flushing the failed rest fails
        except OSError:
            pass

    def _header(self) -> bytes:
        block = 2 * self.channels
        return _HEADER.pack(b"RIFF", 36 + self.data_bytes, b"WAVE", b"fmt ", 16, 1,
                            self.channels, RATE, RATE * block, block, 16, b"data",
                            self.data_bytes)


def _data_bytes(path: Path, channels: int) -> int | None:
    """The audio bytes of an existing WAV of ours with the same format, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
            size = f.seek(0, 2) - _HEADER.size
    except OSError:
        return None
    if len(head) < _HEADER.size:
        return None
    riff, _, wave, fmt, fmt_size, tag, ch, rate, _, block, bits, data, n = _HEADER.unpack(head)
    if ((riff, wave, fmt, data, fmt_size, tag, ch, rate, bits) !=
            (b"RIFF", b"WAVE", b"fmt ", b"data", 16, 1, channels, RATE, 16)):
        return None
    n = min(n, size)
    return n - n % block


class _Writer:
    """The thread side of one recording: decode, place, mix and write each batch."""

    def __init__(self, path: Path, *, stereo: bool, rx_codec: str, rx_rate: int,
                 tx_codec: str, append: bool) -> None:
        self.path = path
        self.stereo = stereo
        self.append = append
        self.rx_codec = get_codec(rx_codec, rx_rate)
        self.tx_codec = get_codec(tx_codec, RATE)
        self.resampler = Resampler(rx_rate, RATE) if rx_rate != RATE else None
        self.right = np.zeros(0, np.int16)   # agent audio from sample ``written`` on
        self.written = 0                     # frames of this stream in the file
        self.file: WavFile | None = None
        self.error: str = ""                 # set once; the media loop reports it
        self.done = False
        # told of a failed batch, from the writer thread (thread-safe; set by CallRecorder)
        self.report: Callable[[BaseException], None] = lambda exc: None

    def batch(self, rx: bytearray, tx: list[tuple[int, bytes | None]], final: bool) -> None:
        """Write the caller's audio of one batch with the agent's audio beside it."""
        if self.done or self.error:
            return
        try:
            if self.file is None:
                self.file = WavFile(self.path, 2 if self.stereo else 1, append=self.append)
            pcm = self.rx_codec.decode(rx) if rx else b""
            if self.resampler is not None:
                pcm = self.resampler.process(pcm)
                if final:
                    pcm += self.resampler.flush()
            left = np.frombuffer(pcm, "<i2")
            self._place(tx)
            n = len(left)
            right = self.right[:n]
            if len(right) < n:
                right = np.concatenate((right, np.zeros(n - len(right), np.int16)))
            self.right = self.right[n:]
            if n:
                self.file.write(self._layout(left, right))
                self.written += n
            if final:
                self.done = True
                self.file.close()
        except Exception as exc:  # noqa: BLE001 - a full disk, or a bug: this call only
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        """Stop this recording after a failed batch (the file keeps its good batches)."""
        if self.error:
            return
        self.error = f"{type(exc).__name__}: {exc}"
        self.report(exc)
        try:
            self._abandon()
        except Exception:  # noqa: BLE001 - the recording is over either way
            pass

    def _place(self, tx: list[tuple[int, bytes | None]]) -> None:
        if not tx:
            return
        bps, base = self.tx_codec.bytes_per_sample, self.written
        need = max((pos - base + len(p) // bps for pos, p in tx if p is not None), default=0)
        if need > len(self.right):      # one allocation per batch, not one per frame
            grown = np.zeros(need, np.int16)
            grown[:len(self.right)] = self.right
            self.right = grown
        joined = b"".join(p for _, p in tx if p is not None)
        pcm = np.frombuffer(self.tx_codec.decode(joined), "<i2")   # one decode per batch
        right, i = self.right, 0
        for pos, payload in tx:
            at = pos - base
            if payload is None:           # clear: the carrier dropped what it had not played
                right[max(at, 0):] = 0
                continue
            k = len(payload) // bps
            chunk, i = pcm[i:i + k], i + k
            if at < 0:                    # only when resampled caller audio lags its clock
                chunk, at = chunk[-at:], 0
            right[at:at + len(chunk)] = chunk

    def _layout(self, left: np.ndarray, right: np.ndarray) -> bytes:
        if self.stereo:
            out = np.empty(2 * len(left), "<i2")
            out[0::2] = left
            out[1::2] = right
            return out.tobytes()
        mixed = left.astype(np.int32) + right
        return np.clip(mixed, -32768, 32767).astype("<i2").tobytes()

    def _abandon(self) -> None:
        self.done = True
        self.right = np.zeros(0, np.int16)
        if self.file is not None:
            self.file.abandon()


class _WriterThread:
    """One daemon thread that runs every call's batches in the order they were handed over.
    No item ends it; should it end anyway, a new one takes over the queue at once."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the writer thread."""
        self._queue.put((fn, args))
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start(thread)

    def _start(self, dead: threading.Thread | None) -> None:
        with self._lock:
            if self._thread is not dead:   # another caller replaced it already
                return
            if dead is not None:
                self.restarts += 1
                log.error("recorder_thread_restarted", restarts=self.restarts)
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="patterd-recorder")
            self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                try:
                    fn, args = self._queue.get()
                    fn(*args)
                except BaseException as exc:  # noqa: BLE001 - one item never ends the thread
                    self._item_failed(exc)
        except BaseException as exc:  # noqa: BLE001 - the loop itself broke: say so, and…
            with contextlib.suppress(Exception):
                log.error("recorder_thread_died", error=repr(exc))
        finally:   # …never leave the queue unserved
            self._start(threading.current_thread())

    @staticmethod
    def _item_failed(exc: BaseException) -> None:
        try:
            log.error("recorder_thread_error", error=repr(exc))
        except Exception:  # noqa: BLE001 - not even logging may stop the thread
            pass


_THREAD = _WriterThread()


class CallRecorder:
    """The media-loop side of one stream's recording (see the module docstring)."""

    __slots__ = ("call_id", "path", "_rx", "_rx_done", "_batch", "_bps", "_rate", "_tx",
                 "_tx_end", "_tx_bps", "_writer", "_closed", "_warned")

    def __init__(self, path: Path, call_id: str, *, channels: str = "dual",
                 rx_codec: str = "PCMU", rx_rate: int = RATE, tx_codec: str = "PCMU",
                 append: bool = False, batch_seconds: float = BATCH_SECONDS,
                 supervisor: Supervisor | None = None) -> None:
        self.call_id = call_id
        self.path = path
        codec = get_codec(rx_codec, rx_rate)
        self._bps, self._rate = codec.bytes_per_sample, rx_rate
        self._batch = max(1, int(batch_seconds * rx_rate)) * self._bps
        self._rx = bytearray()
        self._rx_done = 0                 # caller bytes already handed to the thread
        self._tx: list[tuple[int, bytes | None]] = []
        self._tx_end = 0                  # where the agent audio sent so far ends (samples)
        self._tx_bps = get_codec(tx_codec, RATE).bytes_per_sample
        self._writer = _Writer(path, stereo=channels != "mono", rx_codec=rx_codec,
                               rx_rate=rx_rate, tx_codec=tx_codec, append=append)
        if supervisor is not None:
            self._writer.report = _reporter(supervisor, call_id)
        self._closed = False
        self._warned = False

    # -- the hot path --------------------------------------------------------------------
    def rx(self, payload: bytes) -> None:
        """One frame of the caller's audio, as the carrier sent it."""
        buf = self._rx
        buf += payload
        if len(buf) >= self._batch:
            self._hand_over(final=False)

    def tx(self, payload: bytes) -> None:
        """One frame of the agent's audio, as it is sent to the carrier."""
        if self._closed:
            return
        pos = self._position()
        if pos < self._tx_end:
            pos = self._tx_end
        self._tx.append((pos, payload))
        self._tx_end = pos + len(payload) // self._tx_bps
        if len(self._tx) >= MAX_PENDING_TX:   # no caller audio for a while: bound the memory
            self._hand_over(final=False)

    def cleared(self) -> None:
        """The carrier was told to drop the agent audio it has not played yet."""
        if self._closed:
            return
        pos = self._position()
        self._tx.append((pos, None))
        self._tx_end = pos

    # -- the rest ------------------------------------------------------------------------
    @property
    def failed(self) -> bool:
        """A write failed: this call is no longer recorded."""
        return bool(self._writer.error)

    async def close(self) -> dict[str, Any] | None:
        """Write what is left and finish the file. Returns the ``recording`` event's fields
        (``path``, ``duration`` of the whole file, ``error`` when a write failed — then the
        duration is what the file holds, 0 when nothing could be written), or None when the
        call sent no audio at all."""
        if self._closed:
            return None
        self._closed = True
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._hand_over(final=True, done=done)
        try:
            await asyncio.wait_for(asyncio.wrap_future(done), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("recording_close_slow", call_id=self.call_id, path=str(self.path))
            return None
        self._warn()
        wav = self._writer.file
        if wav is None and not self.failed:
            return None
        frames = wav.frames if wav is not None else 0
        event: dict[str, Any] = {"path": str(self.path), "duration": round(frames / RATE, 3)}
        if self.failed:   # the record says the recording failed, even when nothing was written
            event["error"] = self._writer.error
        return event

    def _position(self) -> int:
        """The caller-audio clock: 8 kHz samples received so far."""
        return (self._rx_done + len(self._rx)) // self._bps * RATE // self._rate

    def _hand_over(self, *, final: bool,
                   done: concurrent.futures.Future[None] | None = None) -> None:
        rx, self._rx = self._rx, bytearray()
        self._rx_done += len(rx)
        tx, self._tx = self._tx, []
        if self.failed:              # stop recording: drop the audio, keep the memory flat
            self._warn()
            if done is not None:
                done.set_result(None)
            return
        _THREAD.submit(_run_batch, self._writer, rx, tx, final, done)

    def _warn(self) -> None:
        if self.failed and not self._warned:
            self._warned = True
            log.warning("recording_failed", call_id=self.call_id, path=str(self.path),
                        error=self._writer.error)


def _reporter(supervisor: Supervisor, call_id: str) -> Callable[[BaseException], None]:
    """``report(exc)`` for the writer thread: the supervisor hears of it on the loop's thread."""
    loop = asyncio.get_running_loop()

    def report(exc: BaseException) -> None:
        try:
            loop.call_soon_threadsafe(functools.partial(
                supervisor.report, COMPONENT, exc, call_id=call_id))
        except RuntimeError:        # the loop is closed: nobody to tell
            pass
    return report


def _run_batch(writer: _Writer, rx: bytearray, tx: list[tuple[int, bytes | None]],
               final: bool, done: concurrent.futures.Future[None] | None) -> None:
    try:
        writer.batch(rx, tx, final)
    except BaseException as exc:  # noqa: BLE001 - whatever it was, this recording only
        writer.fail(exc)
    finally:
        if done is not None and not done.done():
            done.set_result(None)


def start_recorder(session: Any, start: Any, proto: Any) -> CallRecorder | None:
    """A recorder for the session's stream when ``recording.local_dir`` is set, tapped into
    its playout for the agent's audio; None otherwise."""
    cfg = session.config.recording
    if not cfg.local_dir:
        return None
    path = Path(cfg.local_dir).expanduser() / wav_name(session.call_id)
    try:
        recorder = CallRecorder(path, session.call_id, channels=cfg.channels,
                                rx_codec=start.rx_codec, rx_rate=start.rx_rate,
                                tx_codec=proto.tx_codec, append=session.resumed,
                                supervisor=getattr(session.gw, "supervisor", None))
    except Exception as exc:  # noqa: BLE001 - the recording never affects the call
        log.warning("recording_failed", call_id=session.call_id, path=str(path),
                    error=repr(exc))
        return None
    session.playout.tap = recorder
    return recorder


async def finish_recorder(recorder: CallRecorder, gw: Any, session: Any) -> None:
    """Finish the file and put a ``recording`` event (``source: local``) in the call's record;
    a resumed stream's file is the same, so its event is updated. Never raises."""
    try:
        session.playout.tap = None
        event = await recorder.close()
        if event is None:
            return
        rec = gw.registry.get(session.call_id)
        for old in rec.events if rec is not None else ():
            if (old.get("type"), old.get("source"), old.get("path")) == (
                    "recording", "local", event["path"]):
                old.update(event)     # an earlier stream's error stays: the file has a gap
                gw.registry.touch(rec)
                return
        gw.registry.add_event(session.call_id, session.carrier, "recording", source="local",
                              **event)
    except Exception as exc:  # noqa: BLE001 - the recording never affects the call
        log.warning("recording_finish_failed", call_id=session.call_id, error=repr(exc))


__all__ = ["CallRecorder", "WavFile", "finish_recorder", "start_recorder", "wav_name"]
