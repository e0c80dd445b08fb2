"""A pocketsphinx decoder process: ``python -m patterd.backends.stt.sphinx_worker ARGS_JSON``.

Started by :class:`~patterd.backends.stt.pocketsphinx.PocketsphinxSTT`, one per core. Protocol on
stdin/stdout, little-endian: the worker writes ``b"R"`` once its decoder is loaded; then, for each
request ``<u32 length><8 kHz s16le PCM>``, it answers ``<u32 length><UTF-8 text>``. It exits at
end of input (also when the daemon dies: the pipe closes); it ignores SIGINT and runs in a
session of its own. Anything else the libraries print goes to stderr.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, BinaryIO

import numpy as np

from ...audio.resample import Resampler

SAMPLE_RATE = 8000
MODEL_RATE = 16000
NOISE_FLOOR_RMS = 40.0            # on the 16-bit scale, about -58 dBFS
GUARD_SECONDS = 0.15              # silence added around each utterance (VADs trim it tightly)


def decode_with(decoder: Any, pcm_s16le_8khz: bytes) -> str:
    """Recognise one whole utterance of 8 kHz PCM with a pocketsphinx ``Decoder`` (blocking).

    The audio is upsampled to the model's 16 kHz, padded with 150 ms of silence at both ends and
    given a faint fixed noise floor: tightly trimmed speech and digital silence (from a simulator
    or a VAD) otherwise throw the recogniser off.
    """
    if not pcm_s16le_8khz:
        return ""
    guard = bytes(int(GUARD_SECONDS * SAMPLE_RATE) * 2)
    resampler = Resampler(SAMPLE_RATE, MODEL_RATE)
    pcm = resampler.process(guard + pcm_s16le_8khz + guard) + resampler.flush()
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    x += np.random.default_rng(0).normal(0.0, NOISE_FLOOR_RMS, len(x)).astype(np.float32)
    audio = np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()
    decoder.start_utt()
    decoder.process_raw(audio, full_utt=True)    # batch cepstral normalisation: most accurate
    decoder.end_utt()
    hyp = decoder.hyp()
    return " ".join(hyp.hypstr.split()) if hyp is not None else ""


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def serve(decoder_args: dict[str, Any], inp: BinaryIO, out: BinaryIO) -> None:
    """Load a decoder and answer requests until ``inp`` ends."""
    import pocketsphinx

    decoder = pocketsphinx.Decoder(loglevel="FATAL", **decoder_args)
    out.write(b"R")
    out.flush()
    while (header := _read_exact(inp, 4)) is not None:
        pcm = _read_exact(inp, int.from_bytes(header, "little"))
        if pcm is None:
            return
        text = decode_with(decoder, pcm).encode("utf-8")
        out.write(len(text).to_bytes(4, "little") + text)
        out.flush()


def main() -> None:
    """Entry point: keep the protocol on the real stdout, send stray prints to stderr.

    SIGINT is ignored: the daemon decides when its decoders stop (by closing stdin), so a
    Ctrl+C meant for it never interrupts a decode during the drain.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    proto = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(json.loads(sys.argv[1]), sys.stdin.buffer, proto)


if __name__ == "__main__":
    main()
