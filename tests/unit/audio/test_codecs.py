"""G.711 μ-law/A-law and L16 codecs: reference values, round trips, byte order, lookup."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from patterd.audio.codecs import (
    L16_RATES,
    alaw_decode,
    alaw_encode,
    get_codec,
    l16_to_s16le,
    s16le_to_l16,
    ulaw_decode,
    ulaw_encode,
)

ALL_BYTES = bytes(range(256))
ALL_PCM = np.arange(-32768, 32768).astype("<i2")


def s16(values: list[int] | np.ndarray) -> bytes:
    return np.asarray(values, dtype="<i2").tobytes()


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.int64)


# G.711 reference points (ITU-T G.711 tables 1a/2a) on the 16-bit scale (μ-law 14-bit values ×4,
# A-law 13-bit values ×8):
# μ-law (all bits inverted, sign bit 1 = positive): 0xFF/0x7F are +0/-0, 0xFE/0x7E ±2×4,
# 0x80/0x00 ±8031×4 = ±32124.
# A-law (even bits inverted, sign bit 1 = positive): 0xD5/0x55 are ±1×8, 0xAA/0x2A ±4032×8.
@pytest.mark.parametrize(
    ("code", "value"), [(0xFF, 0), (0x7F, 0), (0x00, -32124), (0x80, 32124), (0xFE, 8), (0x7E, -8)]
)
def test_ulaw_reference_values(code: int, value: int) -> None:
    assert samples(ulaw_decode(bytes([code])))[0] == value


@pytest.mark.parametrize(
    ("code", "value"), [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24)]
)
def test_alaw_reference_values(code: int, value: int) -> None:
    assert samples(alaw_decode(bytes([code])))[0] == value


def test_reference_encodings() -> None:
    assert ulaw_encode(s16([0, 32767, -32768])) == bytes([0xFF, 0x80, 0x00])
    assert alaw_encode(s16([0, 32767, -32768])) == bytes([0xD5, 0xAA, 0x2A])


def test_ulaw_code_round_trip_every_byte() -> None:
    back = ulaw_encode(ulaw_decode(ALL_BYTES))
    differing = [b for b in range(256) if back[b] != b]
    assert differing == [0x7F]  # "negative zero" decodes to 0, which encodes as 0xFF
    assert back[0x7F] == 0xFF


def test_alaw_code_round_trip_every_byte() -> None:
    assert alaw_encode(alaw_decode(ALL_BYTES)) == ALL_BYTES


ULAW = (ulaw_encode, ulaw_decode)
ALAW = (alaw_encode, alaw_decode)


@pytest.mark.parametrize(("encode", "decode", "peak"), [(*ULAW, 32124), (*ALAW, 32256)])
def test_pcm_round_trip_within_quantisation_error(encode, decode, peak) -> None:  # type: ignore
    x = ALL_PCM.astype(np.int64)
    y = samples(decode(encode(ALL_PCM.tobytes())))
    inside = np.abs(x) <= peak
    # Half a quantisation step is ~|x|/32 in every segment, plus the 16→14/13-bit truncation.
    assert np.all(np.abs(y - x)[inside] <= np.abs(x[inside]) / 32 + 8)
    assert np.all(np.abs(y[~inside]) == peak)  # beyond the last level: saturate


@pytest.mark.parametrize(("encode", "decode"), [ULAW, ALAW])
def test_g711_sine_snr(encode, decode) -> None:  # type: ignore
    t = np.arange(8000) / 8000
    x = (0.3 * 32767 * np.sin(2 * np.pi * 1003 * t)).astype("<i2")
    y = samples(decode(encode(x.tobytes())))
    noise = y - x.astype(np.int64)
    snr = 10 * np.log10(np.sum(x.astype(float) ** 2) / np.sum(noise.astype(float) ** 2))
    assert snr > 33  # G.711 gives ~36-38 dB on a -10 dBFS tone


def test_matches_cpython_audioop_exhaustively() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # removed in Python 3.13
    pcm = ALL_PCM.tobytes()
    assert ulaw_decode(ALL_BYTES) == audioop.ulaw2lin(ALL_BYTES, 2)
    assert alaw_decode(ALL_BYTES) == audioop.alaw2lin(ALL_BYTES, 2)
    assert ulaw_encode(pcm) == audioop.lin2ulaw(pcm, 2)
    assert alaw_encode(pcm) == audioop.lin2alaw(pcm, 2)


def test_l16_is_big_endian_on_the_wire() -> None:
    pcm = s16([1, -2, 0x1234])
    assert pcm == b"\x01\x00\xfe\xff\x34\x12"
    wire = s16le_to_l16(pcm)
    assert wire == b"\x00\x01\xff\xfe\x12\x34"
    assert l16_to_s16le(wire) == pcm
    codec = get_codec("L16", 16000)
    assert codec.encode(pcm) == wire
    assert codec.decode(wire) == pcm


def test_accepts_any_bytes_like() -> None:
    payload = bytes([0xFF, 0x00, 0x80])
    expected = ulaw_decode(payload)
    assert ulaw_decode(bytearray(payload)) == expected
    assert ulaw_decode(memoryview(payload)) == expected
    assert ulaw_encode(memoryview(expected)) == payload
    assert l16_to_s16le(bytearray(b"\x00\x01")) == b"\x01\x00"


def test_empty_frames() -> None:
    for codec in (get_codec("PCMU"), get_codec("PCMA"), get_codec("L16", 8000)):
        assert codec.decode(b"") == b""
        assert codec.encode(b"") == b""


@pytest.mark.parametrize("encode", [ulaw_encode, alaw_encode, s16le_to_l16, l16_to_s16le])
def test_odd_length_pcm_is_rejected(encode) -> None:  # type: ignore
    with pytest.raises(ValueError, match="even number of bytes"):
        encode(b"\x00\x01\x02")


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("PCMU", "PCMU"),
        ("audio/x-mulaw", "PCMU"),
        ("pcmu", "PCMU"),
        (" PCMA ", "PCMA"),
        ("audio/x-alaw", "PCMA"),
    ],
)
def test_get_codec_g711_names(name: str, canonical: str) -> None:
    codec = get_codec(name)
    assert codec.name == canonical
    assert codec.sample_rate == 8000
    assert codec.bytes_per_sample == 1
    assert codec.frame_bytes() == 160
    assert get_codec(name, 8000) is codec  # shared, stateless instances


def test_g711_codecs_decode_with_their_own_law() -> None:
    assert get_codec("PCMU").decode(b"\xd5") == ulaw_decode(b"\xd5")
    assert get_codec("PCMA").decode(b"\xd5") == alaw_decode(b"\xd5") == s16([8])
    assert get_codec("PCMU").decode(b"\xd5") != get_codec("PCMA").decode(b"\xd5")


@pytest.mark.parametrize("rate", sorted(L16_RATES))
def test_get_codec_l16_rates(rate: int) -> None:
    codec = get_codec("L16", rate)
    assert (codec.name, codec.sample_rate, codec.bytes_per_sample) == ("L16", rate, 2)
    assert codec.frame_bytes(20) == rate // 50 * 2
    assert get_codec("l16", rate) is codec


def test_codecs_are_immutable() -> None:
    with pytest.raises(AttributeError):
        get_codec("PCMU").sample_rate = 16000  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "rate", "message"),
    [
        ("G729", None, "unknown audio codec 'G729'"),
        ("OPUS", None, "unsupported audio codec 'OPUS'"),
        ("G722", None, "unsupported audio codec 'G722'"),
        ("L16", None, "L16' needs an explicit sample_rate"),
        ("L16", 44100, "44100 Hz is not supported"),
        ("PCMU", 16000, "'PCMU' is 8000 Hz only"),
        ("PCMA", 16000, "'PCMA' is 8000 Hz only"),
    ],
)
def test_get_codec_errors_name_the_problem(name: str, rate: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_codec(name, rate)


def test_c_decoder_is_byte_identical_to_the_table_path() -> None:
    """The per-frame decoder (audioop) against the numpy tables it replaced: every code, and
    random frames of every size a carrier sends (empty and odd lengths too)."""
    from patterd.audio import codecs

    assert codecs._audioop is not None
    every = bytes(range(256))
    rng = np.random.default_rng(11)
    frames = [every, b""] + [rng.integers(0, 256, n, dtype=np.uint8).tobytes()
                             for n in (1, 7, 80, 160, 161, 320, 4000)]
    for codec, table in ((codecs.PCMU, codecs._ULAW_DEC), (codecs.PCMA, codecs._ALAW_DEC)):
        for frame in frames:
            new = codec.decode(frame)
            assert isinstance(new, bytes)
            assert new == codecs._table_decode(table, frame)
            assert new == codecs._table_decode(table, memoryview(bytearray(frame)))
        assert codec.decode(memoryview(every)) == codec.decode(every)
