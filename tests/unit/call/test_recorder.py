"""The local call recorder: one timeline for both sides, batches written by a thread, a valid
file at every moment, and failures that stop the recording but nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import threading
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from patterd.audio.codecs import get_codec, ulaw_encode
from patterd.call.recorder import CallRecorder, WavFile, _WriterThread, wav_name
from patterd.ops.supervise import Supervisor

PCMU = get_codec("PCMU")
FRAME = 160                      # 20 ms at 8 kHz
SILENT = ulaw_encode(bytes(2 * FRAME))


def tone(samples: int, freq: float = 1000.0, amp: int = 8000) -> bytes:
    t = np.arange(samples) / 8000
    return (amp * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def read(path: Path) -> tuple[Any, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        params = w.getparams()
        data = np.frombuffer(w.readframes(params.nframes), "<i2")
    return params, data.reshape(-1, params.nchannels)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


def voiced(channel: np.ndarray, threshold: float = 500.0) -> list[int]:
    """Indices of the 20 ms windows with energy."""
    return [i for i in range(len(channel) // FRAME)
            if rms(channel[i * FRAME:(i + 1) * FRAME]) > threshold]


async def test_both_sides_share_the_caller_clock(tmp_path: Path) -> None:
    rec = CallRecorder(tmp_path / "c.wav", "CA1")
    speech = ulaw_encode(tone(FRAME * 25))          # the caller speaks in frames 50–74
    agent = ulaw_encode(tone(320, freq=440))        # 40 ms agent chunks
    for i in range(150):
        if i == 10:
            for _ in range(3):                     # a burst: the carrier plays them in turn
                rec.tx(agent)
        if i == 100:
            rec.tx(agent)                          # after a gap: placed at the caller clock
        rec.rx(speech[(i - 50) * FRAME:(i - 49) * FRAME] if 50 <= i < 75 else SILENT)
    event = await rec.close()
    params, data = read(tmp_path / "c.wav")
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 8000)
    assert params.nframes == 150 * FRAME
    assert event == {"path": str(tmp_path / "c.wav"), "duration": 3.0}
    assert voiced(data[:, 0]) == list(range(50, 75))
    # three 40 ms chunks back to back from frame 10, one more at frame 100
    assert voiced(data[:, 1]) == [*range(10, 16), 100, 101]
    # the audio itself, not only its energy: the agent's decoded samples, exactly placed
    right = data[:, 1]
    assert np.array_equal(right[10 * FRAME:10 * FRAME + 320],
                          np.frombuffer(PCMU.decode(agent), "<i2"))
    assert np.array_equal(data[50 * FRAME:75 * FRAME, 0],
                          np.frombuffer(PCMU.decode(speech), "<i2"))


async def test_clear_drops_agent_audio_the_caller_never_heard(tmp_path: Path) -> None:
    rec = CallRecorder(tmp_path / "c.wav", "CA1")
    agent = ulaw_encode(tone(320, freq=440))
    for i in range(100):
        if i == 20:
            for _ in range(5):                     # 200 ms queued at the carrier
                rec.tx(agent)
        if i == 24:
            rec.cleared()                          # barge-in after 80 ms of it
        rec.rx(SILENT)
    await rec.close()
    _, data = read(tmp_path / "c.wav")
    assert voiced(data[:, 1]) == [20, 21, 22, 23]


async def test_mono_mixes_both_sides(tmp_path: Path) -> None:
    rec = CallRecorder(tmp_path / "m.wav", "CA1", channels="mono")
    for i in range(60):
        if i == 30:
            rec.tx(ulaw_encode(tone(FRAME * 10, freq=440)))
        rec.rx(ulaw_encode(tone(FRAME)) if i < 10 else SILENT)
    await rec.close()
    params, data = read(tmp_path / "m.wav")
    assert params.nchannels == 1 and params.nframes == 60 * FRAME
    assert voiced(data[:, 0]) == [*range(10), *range(30, 40)]


async def test_file_grows_in_batches_with_a_valid_header_while_the_call_runs(
        tmp_path: Path) -> None:
    path = tmp_path / "c.wav"
    rec = CallRecorder(path, "CA1")
    for _ in range(125):                            # 2.5 s: two batches handed over
        rec.rx(SILENT)
    for _ in range(100):
        if path.exists() and read(path)[0].nframes == 16000:
            break
        await asyncio.sleep(0.01)
    params, _ = read(path)                          # readable as is, mid-call
    assert params.nframes == 16000                  # the half second still in memory is not
    assert path.stat().st_size == 44 + 16000 * 4
    await rec.close()
    assert read(path)[0].nframes == 20000


async def test_a_resumed_stream_appends_to_the_calls_file(tmp_path: Path) -> None:
    path = tmp_path / "c.wav"
    first = CallRecorder(path, "CA1")
    for _ in range(50):
        first.rx(ulaw_encode(tone(FRAME)))
    await first.close()
    second = CallRecorder(path, "CA1", append=True)
    for _ in range(25):
        second.rx(SILENT)
    event = await second.close()
    _, data = read(path)
    assert len(data) == 75 * FRAME and event is not None and event["duration"] == 1.5
    assert voiced(data[:, 0]) == list(range(50))


async def test_resampled_l16_caller_audio_keeps_its_length(tmp_path: Path) -> None:
    l16 = get_codec("L16", 16000)
    rec = CallRecorder(tmp_path / "c.wav", "CA1", rx_codec="L16", rx_rate=16000)
    for i in range(100):
        pcm = (tone(320, freq=500) if 40 <= i < 60 else bytes(640))
        rec.rx(l16.encode(pcm))
    await rec.close()
    _, data = read(tmp_path / "c.wav")
    assert abs(len(data) - 100 * FRAME) <= 2
    assert voiced(data[:, 0]) == list(range(40, 60))


@pytest.mark.parametrize("call_id", ["../x", "../../etc/passwd", "/abs/path", "..", "a/b\\c",
                                     "v3:Ab-_9"])
def test_call_ids_stay_inside_the_directory(tmp_path: Path, call_id: str) -> None:
    name = wav_name(call_id)
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    assert wav_name("../x") != wav_name("__x") != wav_name(".._x")   # no two ids share a file
    assert wav_name("CA0123abcd") == "CA0123abcd.wav"                 # plain ids are unchanged


async def test_a_dotted_call_id_is_recorded_inside_the_directory(tmp_path: Path) -> None:
    inner = tmp_path / "rec"
    rec = CallRecorder(inner / wav_name("../x"), "../x")
    rec.rx(SILENT)
    event = await rec.close()
    assert event is not None
    assert [p.parent for p in tmp_path.rglob("*.wav")] == [inner]
    assert Path(event["path"]).parent == inner


async def test_an_unusable_directory_stops_the_recording_only(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from patterd.ops.logging import configure_logging
    configure_logging("info", "json")
    (tmp_path / "file").write_text("not a directory")   # even root cannot create below a file
    rec = CallRecorder(tmp_path / "file" / "rec" / "c.wav", "CA7")
    for _ in range(300):                                 # 6 s: several batches fail
        rec.rx(SILENT)
        rec.tx(SILENT[:80])
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    for _ in range(300):
        rec.rx(SILENT)
    assert rec.failed
    (tmp_path / "file").unlink()                         # usable again: still not recorded,
    (tmp_path / "file" / "rec").mkdir(parents=True)      # a file missing its start would lie
    for _ in range(100):
        rec.rx(SILENT)
    event = await rec.close()                            # nothing written: the event says why
    assert event is not None and event["duration"] == 0.0
    assert "NotADirectoryError" in event["error"] or "FileExistsError" in event["error"]
    assert not list(tmp_path.rglob("*.wav"))
    assert len(rec._rx) < 8000 and not rec._tx           # noqa: SLF001 - memory stays flat
    lines = [json.loads(ln) for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    failed = [ln for ln in lines if ln["event"] == "recording_failed"]
    assert len(failed) == 1 and failed[0]["call_id"] == "CA7"
    assert "NotADirectoryError" in failed[0]["error"] or "FileExistsError" in failed[0]["error"]


def test_a_full_disk_mid_file_leaves_a_valid_file_of_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "c.wav"
    wav = WavFile(path, 2)
    wav.write(bytes(32000))                       # one batch lands
    with file_size_limit(40000):                  # then the disk "fills" inside the next one
        with pytest.raises(OSError):
            wav.write(bytes(32000))
        wav.abandon()
    assert path.stat().st_size == 44 + 32000      # the partial batch is cut off again
    assert read(path)[0].nframes == 8000


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG (Python ignores SIGXFSZ), even as root."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


async def test_a_bad_batch_stops_only_its_call_and_the_writer_thread_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One call's batch raising — even SystemExit, which used to end the shared thread — is
    reported with its call id; that call's recording stops, every other call's is written."""
    supervisor = Supervisor()
    bad = CallRecorder(tmp_path / "bad.wav", "CA-bad", supervisor=supervisor)
    good = CallRecorder(tmp_path / "good.wav", "CA-good", supervisor=supervisor)

    def broken(tx: Any) -> None:
        raise SystemExit("a bug in one call's batch")

    monkeypatch.setattr(bad._writer, "_place", broken)   # noqa: SLF001
    for _ in range(150):                                # 3 s of both calls
        for rec in (bad, good):
            rec.rx(SILENT)
            rec.tx(SILENT)
        await asyncio.sleep(0)
    failed = await bad.close()                          # nothing written for it
    assert failed is not None and failed["duration"] == 0.0 and "SystemExit" in failed["error"]
    event = await good.close()
    assert event is not None and event["duration"] == 3.0 and "error" not in event
    assert read(tmp_path / "good.wav")[0].nframes == 3 * 8000
    assert bad.failed and "SystemExit" in bad._writer.error   # noqa: SLF001
    await asyncio.sleep(0)                              # reports hop to the loop's thread
    assert supervisor.errors == {"recorder": 1}         # once, not once per batch


def test_a_writer_thread_that_ends_is_replaced_and_serves_the_queue() -> None:
    writer = _WriterThread()
    served: list[int] = []
    first = threading.Event()

    def end_the_thread(exc: BaseException) -> None:   # as if the loop itself broke
        writer._item_failed = lambda exc: None          # type: ignore[method-assign]
        first.set()
        raise SystemExit

    writer._item_failed = end_the_thread                # type: ignore[method-assign]
    writer.submit(lambda: 1 / 0)
    assert first.wait(5)
    done = threading.Event()
    writer.submit(served.append, 1)
    writer.submit(done.set)
    assert done.wait(5) and served == [1]
    assert writer.restarts == 1
