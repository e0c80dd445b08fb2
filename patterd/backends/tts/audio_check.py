"""Is what a TTS provider sent really the raw audio that was asked for?

A proxy's error page, a JSON error sent with status 200, or a container (WAV, MP3, Ogg …) when
raw samples were asked for would be played as noise or a click, and recorded as spoken. The
checks run before a byte of the body is played:

- the ``Content-Type``: a textual type (JSON, HTML, XML, plain text) is refused. Audio types
  are not required: the providers document none for raw audio (ElevenLabs' own API spec gives
  ``text/event-stream`` for its audio stream; the others send ``application/octet-stream`` or an
  ``audio/*`` type), so only what is certainly not audio is refused by its type;
- the first bytes: a container's signature (``RIFF…WAVE``, ``ID3``, two consecutive MPEG audio
  or ADTS frame headers, ``OggS``, ``fLaC``, an MP4 ``ftyp`` box, EBML/WebM, ``#!AMR``), or text
  that opens like JSON, HTML, XML or Server-Sent Events and stays printable;
- a whole body shorter than the probe with an odd length when 16-bit PCM was asked for.

Raw audio may begin with any bytes, so each text check is strict enough that real μ-law, A-law
or PCM does not pass it (an A-law lead-in of slightly negative samples reads ``UTW[…``: it opens
with no JSON structure). :class:`BodyCheck` holds back the first :data:`PROBE_BYTES` (a few
milliseconds of audio) until the verdict, longer only while what may be a chain of MPEG frame
headers waits for its next link.
"""

from __future__ import annotations

import re

PROBE_BYTES = 64
"""Bytes held back from the start of a body before it is judged (8 ms of μ-law)."""
MAX_PROBE_BYTES = 8192
"""Most bytes held while a chain of possible MPEG/ADTS frames waits for its next header."""
FRAMES = 3
"""Consecutive MPEG/ADTS frame headers that make a body an MP3/AAC stream."""

_NEED_MORE = object()
_TEXT_TYPES = frozenset({"application/json", "application/xml", "application/javascript",
                         "application/x-ndjson", "application/problem+json"})
_JSON_START = re.compile(rb'\s*(?:\{\s*["}]|\[\s*[{"\]])')
_MARKUP_START = re.compile(rb"\s*<(?:[!?/]|[A-Za-z][A-Za-z0-9:-]*[\s>/])")
_SSE_START = re.compile(rb"(?:data|event|id|retry):")
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
_MPEG_BITRATES = {  # kbit/s by (version is MPEG-1, layer) and index 1..14
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


class NotAudio(ValueError):
    """The body is not the raw audio that was asked for; the message says what it is."""


def refused_content_type(content_type: str) -> str | None:
    """Why a body of this ``Content-Type`` cannot be audio, or None when it may be."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "text/event-stream":      # ElevenLabs' documented type for its audio stream
        return None
    if mime.startswith("text/") or mime in _TEXT_TYPES or mime.endswith(("+json", "+xml")):
        return f"a body of type {mime}"
    return None


def _mpeg_frame(head: bytes, at: int) -> tuple[int, bytes] | None:
    """``(frame length, header signature)`` of a plausible MPEG audio frame header at ``at``."""
    b1, b2 = head[at + 1], head[at + 2]
    version, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate_index, rate_index = b2 >> 4, (b2 >> 2) & 3
    if (head[at] != 0xFF or b1 & 0xE0 != 0xE0 or version == 1 or layer_bits == 0
            or bitrate_index in (0, 15) or rate_index == 3):
        return None
    layer = 4 - layer_bits
    mpeg1 = version == 3
    bitrate = _MPEG_BITRATES[(mpeg1, layer)][bitrate_index - 1] * 1000
    rate = _MPEG_RATES[version][rate_index]
    padding = (b2 >> 1) & 1
    if layer == 1:
        length = (12 * bitrate // rate + padding) * 4
    else:
        length = (144 if mpeg1 or layer == 2 else 72) * bitrate // rate + padding
    return length, bytes((b1 & 0xFE, b2 & 0x0C))   # what every frame of the stream shares


def _adts_frame(head: bytes, at: int) -> tuple[int, bytes] | None:
    """``(frame length, header signature)`` of a plausible ADTS (AAC) frame header at ``at``."""
    if head[at] != 0xFF or head[at + 1] & 0xF6 != 0xF0 or (head[at + 2] >> 2) & 0xF > 12:
        return None
    length = ((head[at + 3] & 3) << 11) | (head[at + 4] << 3) | (head[at + 5] >> 5)
    if length < 7:
        return None
    return length, bytes((head[at + 1], head[at + 2] & 0xFC))


def _framed(head: bytes, final: bool) -> object:
    """A reason if ``head`` opens with :data:`FRAMES` consecutive MPEG audio or ADTS frames of
    one stream; ``_NEED_MORE`` while the next header is still to come; None otherwise. (Raw
    μ-law may well open with a byte pair that parses as a frame header; a chain of them, each
    where the previous one's length says, does not happen by chance.)"""
    for parse, what in ((_adts_frame, "an AAC (ADTS) stream"), (_mpeg_frame, "an MP3 stream")):
        at, signature = 0, b""
        for _ in range(FRAMES):
            if len(head) < at + 6:
                return None if final else _NEED_MORE
            frame = parse(head, at)
            if frame is None or (signature and frame[1] != signature):
                break
            signature = frame[1]
            at += frame[0]
        else:
            return what
    return None


def _container(head: bytes, final: bool) -> object:
    """A reason if ``head`` starts a known audio container, ``_NEED_MORE``, or None."""
    if head[:4] == b"RIFF" and (head[8:12] == b"WAVE" or (final and len(head) < 12)):
        return "a WAV file"
    if head[:3] == b"ID3" and len(head) > 3 and head[3] in (2, 3, 4):
        return "an MP3 file (ID3 tag)"
    if head[:4] == b"OggS":
        return "an Ogg file"
    if head[:4] == b"fLaC":
        return "a FLAC file"
    if head[4:8] == b"ftyp":
        return "an MP4 file"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "a WebM/Matroska file"
    if head[:6] == b"#!AMR\n":
        return "an AMR file"
    if head[:1] == b"\xff":
        return _framed(head, final)
    return None


def _text(head: bytes) -> str | None:
    """What kind of text ``head`` is, if it opens like JSON or markup and stays printable."""
    probe = head[:PROBE_BYTES]
    if not all(b in _PRINTABLE for b in probe):
        return None
    if _JSON_START.match(probe):
        return "a JSON body"
    if _MARKUP_START.match(probe):
        return "an HTML/XML body"
    if _SSE_START.match(probe):
        return "an event stream of text"
    return None


def judge(head: bytes, *, final: bool, pcm16: bool) -> object:
    """The verdict on the start of a body: a reason it is not raw audio, ``_NEED_MORE``, or
    None (it is audio as far as can be told). ``final``: ``head`` is the whole body."""
    if len(head) < PROBE_BYTES and not final:
        return _NEED_MORE
    reason = _container(head, final)
    if reason is _NEED_MORE:
        if len(head) < MAX_PROBE_BYTES:
            return _NEED_MORE
        reason = None
    if reason is None:
        reason = _text(head)
    if reason is None and final and pcm16 and len(head) % 2:
        reason = f"an odd number of bytes ({len(head)}) for 16-bit PCM"
    return reason


class BodyCheck:
    """Holds back the start of a body until :func:`judge` has a verdict.

    :meth:`feed` returns the bytes that may be played (``b""`` while the start is held) or
    raises :class:`NotAudio`; :meth:`end` does the same at the end of the body. Once the body is
    judged audio, :attr:`decided` is True and bytes pass straight through."""

    __slots__ = ("_held", "_pcm16", "decided")

    def __init__(self, *, pcm16: bool) -> None:
        self._held = b""
        self._pcm16 = pcm16
        self.decided = False

    def feed(self, data: bytes) -> bytes:
        """Bytes of the body as they arrive; returns those ready to be played."""
        if self.decided:
            return data
        self._held += data
        return self._verdict(final=False)

    def end(self) -> bytes:
        """The body has ended; returns what was still held, if it is audio."""
        if self.decided:
            return b""
        return self._verdict(final=True)

    def _verdict(self, *, final: bool) -> bytes:
        reason = judge(self._held, final=final, pcm16=self._pcm16)
        if reason is _NEED_MORE:
            return b""
        if reason is not None:
            raise NotAudio(f"{reason} instead of raw audio")
        self.decided = True
        held, self._held = self._held, b""
        return held


__all__ = ["BodyCheck", "MAX_PROBE_BYTES", "NotAudio", "PROBE_BYTES", "judge",
           "refused_content_type"]
