"""The caller's voice and ears, offline: ``--say TEXT`` through the espeak TTS provider,
``--wav FILE`` read and resampled to 8 kHz, and the agent's side of the transcript recognised
from what the caller heard (pocketsphinx STT provider, vocabulary from the config's messages).
"""

from __future__ import annotations

import struct
import wave
from pathlib import Path
from typing import Protocol

import numpy as np

from ..audio.resample import Resampler
from ..config import BackendConfig, Config, Rule
from .caller import Say
from .playout import VOICED_RMS
from .results import CallResult

SAMPLE_RATE = 8000
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


class SpeechError(Exception):
    """Audio for the caller could not be produced (no TTS, unreadable WAV, …)."""


# ---------------------------------------------------------------------- the caller's voice
async def synthesize(text: str, *, voice: str = "", rate: int = 0) -> bytes:
    """``text`` spoken by espeak as s16le 8 kHz mono PCM."""
    try:
        from ..backends.tts.espeak import EspeakTTS
    except ImportError as exc:
        raise SpeechError(f"--say needs the espeak TTS provider ({exc}); use --wav") from None
    options = {"rate": rate} if rate else {}
    tts = EspeakTTS(BackendConfig("espeak", voice=voice, options=options))
    chunks: list[bytes] = []
    try:
        async for chunk in tts.synthesize(text):
            chunks.append(chunk)
    except (RuntimeError, OSError, ValueError) as exc:
        raise SpeechError(f"espeak could not speak {text!r}: {exc}") from None
    finally:
        await tts.close()
    return b"".join(chunks)


async def say(text: str, *, voice: str = "", rate: int = 0) -> Say:
    """A :class:`Say` step for ``text`` (leading/trailing silence trimmed)."""
    return Say(trim_silence(await synthesize(text, voice=voice, rate=rate)), text)


def say_wav(path: str | Path) -> Say:
    """A :class:`Say` step playing a WAV file (any rate, mono or stereo)."""
    return Say(trim_silence(read_wav(path)), f"[{Path(path).name}]")


def trim_silence(pcm: bytes, threshold: float = VOICED_RMS, window_ms: int = 10) -> bytes:
    """``pcm`` without leading and trailing (near-)silence, so utterance ends are exact."""
    samples = np.frombuffer(pcm[: len(pcm) & ~1], dtype="<i2")
    n = SAMPLE_RATE * window_ms // 1000
    if len(samples) < n:
        return pcm
    frames = samples[: len(samples) // n * n].astype(np.float32).reshape(-1, n)
    loud = np.flatnonzero(np.sqrt(np.mean(frames * frames, axis=1)) >= threshold)
    if not len(loud):
        return b""
    return samples[loud[0] * n:(loud[-1] + 1) * n].tobytes()


# ---------------------------------------------------------------------- WAV files
def read_wav(path: str | Path) -> bytes:
    """A WAV file (PCM 8/16/24/32-bit or float, any rate, any channels) as s16le 8 kHz mono."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SpeechError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SpeechError(f"{path}: not a WAV (RIFF/WAVE) file")
    fmt: tuple[int, int, int, int] | None = None
    pos, body = 12, b""
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        chunk = data[pos + 8:pos + 8 + size]
        if cid == b"fmt " and len(chunk) >= 16:
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", chunk[:16])
            if tag == _EXTENSIBLE and len(chunk) >= 26:
                tag = struct.unpack("<H", chunk[24:26])[0]
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            body = chunk
        pos += 8 + size + (size & 1)
    if fmt is None:
        raise SpeechError(f"{path}: no fmt chunk")
    tag, channels, rate, bits = fmt
    if channels < 1 or rate < 1:
        raise SpeechError(f"{path}: invalid format ({channels} channels at {rate} Hz)")
    samples = _to_float(body, tag, bits, path)
    samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2").tobytes()
    resampler = Resampler(rate, SAMPLE_RATE)
    out = resampler.process(pcm)
    return bytes(out) + resampler.flush()


def _to_float(body: bytes, tag: int, bits: int, path: str | Path) -> np.ndarray:
    if tag == _PCM and bits == 8:
        return (np.frombuffer(body, np.uint8).astype(np.float32) - 128.0) / 128.0
    if tag == _PCM and bits == 16:
        return np.frombuffer(body[: len(body) & ~1], "<i2").astype(np.float32) / 32768.0
    if tag == _PCM and bits == 24:
        raw = np.frombuffer(body[: len(body) // 3 * 3], np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float32) / float(1 << 23)
    if tag == _PCM and bits == 32:
        return np.frombuffer(body[: len(body) & ~3], "<i4").astype(np.float32) / 2.0**31
    if tag == _FLOAT and bits in (32, 64):
        dtype = "<f4" if bits == 32 else "<f8"
        size = bits // 8
        return np.frombuffer(body[: len(body) // size * size], dtype).astype(np.float32)
    raise SpeechError(f"{path}: unsupported WAV encoding (format {tag}, {bits} bits); "
                      "use PCM or float")


def write_wav(path: str | Path, pcm: bytes, rate: int = SAMPLE_RATE) -> None:
    """Write s16le mono PCM as a 16-bit WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


# ---------------------------------------------------------------------- the agent's words
def vocabulary(config: Config) -> list[str]:
    """Everything the agent may say, from the config: first message, rule replies, fallback,
    voicemail message (``{name}`` placeholders filled from ``agent.variables``)."""
    agent = config.agent
    texts = [agent.first_message, agent.voicemail_message, config.llm.fallback,
             *(rule.reply for rule in config.llm.rules)]
    out: list[str] = []
    for text in texts:
        for name, value in agent.variables.items():
            text = text.replace("{" + name + "}", value)
        if text and text not in out:
            out.append(text)
    return out


class Transcriber(Protocol):
    """Turns heard agent audio (s16le 8 kHz) into text."""

    async def transcribe(self, pcm: bytes) -> str: ...


class SttTranscriber:
    """Any :class:`patterd.backends.stt.base.STT` provider used as a batch transcriber."""

    def __init__(self, stt: object) -> None:
        self.stt = stt
        self._started = False

    async def transcribe(self, pcm: bytes) -> str:
        stt = self.stt
        if not self._started:
            await stt.start()  # type: ignore[attr-defined]
            self._started = True
        stream = stt.open_stream()  # type: ignore[attr-defined]
        try:
            for i in range(0, len(pcm), 320):
                stream.push(pcm[i:i + 320])
            return (await stream.finalize()).text.strip()
        finally:
            await stream.close()

    async def close(self) -> None:
        await self.stt.close()  # type: ignore[attr-defined]


def make_transcriber(config: Config) -> SttTranscriber | None:
    """The offline pocketsphinx STT limited to what the agent may say, or None when that
    provider is not available (the transcript then shows the agent's lines without text).

    The vocabulary is handed over both ways the provider may read it: ``options.vocabulary``
    and, as the daemon's STT learns its phrases from the rules agent, as rule phrases.
    """
    phrases = tuple(vocabulary(config))
    cfg = BackendConfig("pocketsphinx", options={"vocabulary": phrases})
    llm = BackendConfig("rules", rules=tuple(Rule(phrases=(p,)) for p in phrases))
    try:
        from .. import backends
        factory = getattr(backends, "create_stt", None)
        if factory is not None:
            try:
                return SttTranscriber(factory(cfg, config.agent, llm=llm))
            except TypeError:
                return SttTranscriber(factory(cfg, config.agent))
        from ..backends.stt import pocketsphinx as module  # type: ignore[attr-defined]
        from ..backends.stt.base import STT
    except ImportError:
        return None
    except Exception:  # the provider exists but cannot start here (model files, …)
        return None
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, STT) and value is not STT:
            try:
                return SttTranscriber(value(cfg, config.agent))  # type: ignore[call-arg]
            except Exception:
                return None
    return None


def closest_message(text: str, messages: list[str], cutoff: float = 0.75,
                    margin: float = 0.1) -> str:
    """The message in ``messages`` that ``text`` resembles most (similarity of the lower-cased
    words at least ``cutoff`` and ``margin`` ahead of the runner-up), or ``""``: recognition of
    synthetic telephone speech is imperfect, and this names the sentence the agent most likely
    said — only when that is clear."""
    from difflib import SequenceMatcher

    from ..backends.llm.rules import words
    said = " ".join(words(text))
    scored = sorted(((SequenceMatcher(None, said, " ".join(words(m)), autojunk=False).ratio(), m)
                     for m in messages), key=lambda x: -x[0])
    if not scored or scored[0][0] < cutoff:
        return ""
    if len(scored) > 1 and scored[0][0] - scored[1][0] < margin:
        return ""                       # ambiguous
    return scored[0][1]


async def transcribe_agent(result: CallResult, transcriber: Transcriber | None,
                           messages: list[str] | None = None) -> None:
    """Fill in the text of the agent's lines of ``result`` (the lines heard as audio), and the
    closest of ``messages`` (the agent's configured sentences) in ``Line.match`` for lines that
    were heard to the end (an interrupted line is a fragment of some message)."""
    if transcriber is None:
        return
    for line in result.lines:
        if line.who == "agent" and not line.text and line.end > line.start:
            pcm = result.audio_between(line.start, line.end)
            if pcm:
                line.text = await transcriber.transcribe(pcm)
                if messages and line.text and not line.interrupted:
                    line.match = closest_message(line.text, messages)
