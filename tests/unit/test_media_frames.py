"""The carriers' media-stream translators: frames in, events out, frames to send."""

from __future__ import annotations

import base64
import json

import pytest

from patterd.carriers.base import (AudioIn, DtmfIn, Ignored, MalformedFrame, MarkPlayed,
                                   StreamStarted, StreamStopped)
from patterd.carriers.telnyx.media import TelnyxMedia
from patterd.carriers.twilio.media import TwilioMedia

TWILIO_START = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ9",
                "start": {"streamSid": "MZ9", "accountSid": "AC1", "callSid": "CA1",
                          "tracks": ["inbound"], "customParameters": {"call_id": "CA1"},
                          "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                          "channels": 1}}}


def test_twilio_frames() -> None:
    t = TwilioMedia()
    start = t.parse(json.dumps(TWILIO_START))
    assert start == StreamStarted("MZ9", "CA1", "PCMU", 8000, {"call_id": "CA1"})
    media = {"event": "media", "streamSid": "MZ9", "media": {
        "track": "inbound", "chunk": "1", "timestamp": "0",
        "payload": base64.b64encode(b"\x01\x02").decode()}}
    assert t.parse(json.dumps(media)) == AudioIn(b"\x01\x02")
    assert t.parse('{"event":"dtmf","streamSid":"MZ9","dtmf":{"track":"inbound_track",'
                   '"digit":"#"}}') == DtmfIn("#")
    assert t.parse('{"event":"mark","streamSid":"MZ9","mark":{"name":"u1"}}') == MarkPlayed("u1")
    assert t.parse('{"event":"stop","streamSid":"MZ9","stop":{}}') == StreamStopped()
    assert isinstance(t.parse('{"event":"connected","protocol":"Call"}'), Ignored)
    out = json.loads(t.audio(b"\xff\x7f"))
    assert out == {"event": "media", "streamSid": "MZ9",
                   "media": {"payload": base64.b64encode(b"\xff\x7f").decode()}}
    assert json.loads(t.mark("u2")) == {"event": "mark", "streamSid": "MZ9",
                                        "mark": {"name": "u2"}}
    assert json.loads(t.clear()) == {"event": "clear", "streamSid": "MZ9"}


@pytest.mark.parametrize("frame", [
    "not json", "[]", '{"event":"media"}', '{"event":"media","media":{"payload":"!!"}}',
    '{"event":"media","media":{"payload":5}}', '{"event":"dtmf","dtmf":{"digit":"x"}}',
    '{"event":"mark","mark":{}}', '{"event":"start","start":{}}', '{"event":"bogus"}',
    '{"event":"start","start":{"streamSid":"MZ","callSid":"CA","mediaFormat":'
    '{"encoding":"audio/x-l16"}}}',
])
def test_twilio_malformed_frames_raise(frame: str) -> None:
    with pytest.raises(MalformedFrame):
        TwilioMedia().parse(frame)


def test_twilio_outbound_track_is_ignored() -> None:
    frame = '{"event":"media","media":{"track":"outbound","payload":"AA=="}}'
    assert isinstance(TwilioMedia().parse(frame), Ignored)


def test_telnyx_frames_and_codec_from_start() -> None:
    t = TelnyxMedia()
    start = t.parse(json.dumps({
        "event": "start", "sequence_number": "1", "stream_id": "s-1",
        "start": {"call_control_id": "v3:abc", "client_state": "eyJ9",
                  "media_format": {"encoding": "PCMA", "sample_rate": 8000, "channels": 1}}}))
    assert start == StreamStarted("s-1", "v3:abc", "PCMA", 8000, {"client_state": "eyJ9"})
    l16 = t.parse(json.dumps({"event": "start", "stream_id": "s", "start": {
        "call_control_id": "v3:x", "media_format": {"encoding": "L16", "sample_rate": 16000}}}))
    assert (l16.rx_codec, l16.rx_rate) == ("L16", 16000)
    assert t.parse('{"event":"media","media":{"track":"inbound","payload":"AQI="}}') == \
        AudioIn(b"\x01\x02")
    assert t.parse('{"event":"mark","mark":{"name":"u1"}}') == MarkPlayed("u1")
    assert isinstance(t.parse('{"event":"error","payload":{"code":100003}}'), Ignored)
    assert json.loads(t.audio(b"\x00")) == {"event": "media", "media": {"payload": "AA=="}}
    assert json.loads(t.clear()) == {"event": "clear"}
    assert json.loads(t.mark("m")) == {"event": "mark", "mark": {"name": "m"}}
    # A codec we cannot decode still starts the stream (the media route then ends the call
    # cleanly); a nonsense sample rate is malformed.
    opus = t.parse('{"event":"start","start":{"call_control_id":"v3:x",'
                   '"media_format":{"encoding":"OPUS","sample_rate":48000}}}')
    assert isinstance(opus, StreamStarted) and opus.rx_codec == "OPUS"
    with pytest.raises(MalformedFrame):
        t.parse('{"event":"start","start":{"call_control_id":"v3:x",'
                '"media_format":{"encoding":"PCMU","sample_rate":-1}}}')
