"""Signature checks against the carriers' reference code (twilio-python, PyNaCl)."""

from __future__ import annotations

import base64
import time

import pytest
from nacl.signing import SigningKey
from twilio.request_validator import RequestValidator

from patterd.carriers.telnyx.signature import (KeyFormatError, SignatureVerifier as TelnyxVerifier,
                                               load_public_key)
from patterd.carriers.telnyx.stream_token import StreamTokens
from patterd.carriers.twilio.signature import (SignatureVerifier, compute_signature,
                                               url_variants)


def test_twilio_reference_vector() -> None:
    # The documented vector (recomputed in shared/reference/twilio.md).
    params = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+12349013030"),
              ("Digits", "1234"), ("From", "+12349013030"), ("To", "+18005551212")]
    sig = compute_signature(b"12345", "https://mycompany.com/myapp.php?foo=1&bar=2", params)
    assert sig == b"0/KCTR6DLpKmkAf8muzZqo1nDgQ="


@pytest.mark.parametrize("params", [
    {"CallSid": "CA1", "From": "+15551234567", "Empty": ""},
    {"Ünïcode": "välue ✓", "a": "1", "B": "2"},
    {},
])
def test_twilio_matches_official_validator(params: dict[str, str]) -> None:
    url = "https://gw.example.com/webhooks/twilio/voice?x=1&y=%20z"
    expected = RequestValidator("tok").compute_signature(url, params)
    ours = compute_signature(b"tok", url, list(params.items()))
    assert ours.decode() == expected


def test_twilio_repeated_keys_match_official_validator() -> None:
    items = [("StatusCallbackEvent", "ringing"), ("StatusCallbackEvent", "answered"),
             ("A", "1"), ("StatusCallbackEvent", "answered")]

    class Multi(dict):
        def getall(self, key: str) -> list[str]:
            return [v for k, v in items if k == key]

    url = "https://gw.example.com/cb"
    expected = RequestValidator("tok").compute_signature(url, Multi({k: v for k, v in items}))
    assert compute_signature(b"tok", url, items).decode() == expected


def test_url_variants_add_and_remove_default_port() -> None:
    assert url_variants("https://a.example.com/p?q=1") == (
        "https://a.example.com/p?q=1", "https://a.example.com:443/p?q=1")
    assert url_variants("http://a.example.com:80/p") == ("http://a.example.com/p",
                                                         "http://a.example.com:80/p")
    assert url_variants("wss://a.example.com/m")[1] == "wss://a.example.com:443/m"


def test_verifier_accepts_url_with_or_without_default_port() -> None:
    v = SignatureVerifier("tok", "https://gw.example.com")
    params = [("CallSid", "CA1")]
    for signed in ("https://gw.example.com/hook?a=b", "https://gw.example.com:443/hook?a=b"):
        sig = RequestValidator("tok").compute_signature(signed, dict(params))
        assert v.verify("/hook?a=b", params, sig)
    assert not v.verify("/hook?a=c", params,
                        RequestValidator("tok").compute_signature(
                            "https://gw.example.com/hook?a=b", dict(params)))


def test_verifier_uses_public_url_prefix_once() -> None:
    v = SignatureVerifier("tok", "https://gw.example.com/voice/")
    url = "https://gw.example.com/voice/webhooks/twilio/status"
    sig = RequestValidator("tok").compute_signature(url, {})
    assert v.verify("/webhooks/twilio/status", [], sig)          # proxy stripped the prefix
    assert v.verify("/voice/webhooks/twilio/status", [], sig)    # proxy kept it


def test_verifier_rejects_wrong_token_tampering_and_empty() -> None:
    v = SignatureVerifier("tok", "https://gw.example.com")
    sig = RequestValidator("other").compute_signature("https://gw.example.com/h", {"a": "1"})
    assert not v.verify("/h", [("a", "1")], sig)
    good = RequestValidator("tok").compute_signature("https://gw.example.com/h", {"a": "1"})
    assert v.verify("/h", [("a", "1")], good)
    assert not v.verify("/h", [("a", "2")], good)
    assert not v.verify("/h", [("a", "1"), ("b", "")], good)
    assert not v.verify("/h", [("a", "1")], "")
    assert not v.verify("/h", [("a", "1")], "ünicode-garbage")


def test_shared_key_signatures_as_documented_and_as_twilio_python_computes_them() -> None:
    """Twilio's SharedKey signing (Webhook Settings, public beta): the same signed string
    (URL, then each sorted name and value), HMAC-SHA256 with the key's secret, base64; the
    settings header names the key and the algorithm."""
    import hashlib
    import hmac

    v = SignatureVerifier("tok", "https://gw.example.com",
                          {"webhooks_sharedkey_01": "new-secret", "KSold": "old-secret"})
    url = "https://gw.example.com/webhooks/twilio/voice?x=1"
    params = {"CallSid": "CA1", "From": "+15551112222", "AccountSid": "AC1"}
    signed = url + "".join(k + params[k] for k in sorted(params))
    by_hand = base64.b64encode(hmac.new(b"new-secret", signed.encode(), hashlib.sha256)
                               .digest()).decode()
    official = RequestValidator("new-secret").compute_signature(url, params, "HMAC_SHA256")
    assert by_hand == official
    header = "key=webhooks_sharedkey_01,algorithm=HMAC_SHA256"
    items = list(params.items())
    assert v.check("/webhooks/twilio/voice?x=1", items, official, settings=header) == ""
    # Rotation: the other key signs too; the settings header's algorithm may be SHA1.
    old = RequestValidator("old-secret").compute_signature(url, params, "HMAC_SHA1")
    assert v.verify("/webhooks/twilio/voice?x=1", items, old,
                    settings="key=KSold,algorithm=HMAC_SHA1")
    # What must not pass.
    assert "names a signing key not in carrier.signing_keys" in v.check(
        "/webhooks/twilio/voice?x=1", items, official, settings="key=KSnope,algorithm=HMAC_SHA256")
    assert "unsupported algorithm" in v.check(
        "/webhooks/twilio/voice?x=1", items, official,
        settings="key=webhooks_sharedkey_01,algorithm=HMAC_MD5")
    assert v.check("/webhooks/twilio/voice?x=1", items, official) != ""     # no header: token
    token_signed = RequestValidator("tok").compute_signature(url, params)
    assert v.check("/webhooks/twilio/voice?x=1", items, token_signed, settings=header) != ""
    assert v.verify("/webhooks/twilio/voice?x=1", items, token_signed)       # SHA1 unchanged
    assert v.check("/webhooks/twilio/voice?x=2", items, official, settings=header) != ""


# -- Telnyx ------------------------------------------------------------------------------------

def _pair() -> tuple[SigningKey, bytes]:
    key = SigningKey.generate()
    return key, bytes(key.verify_key)


def _sign(key: SigningKey, ts: int, body: bytes) -> str:
    return base64.b64encode(key.sign(str(ts).encode() + b"|" + body).signature).decode()


def test_telnyx_key_formats_raw_spki_pem() -> None:
    _, raw = _pair()
    spki = bytes.fromhex("302a300506032b6570032100") + raw
    pem = ("-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(spki).decode()
           + "\n-----END PUBLIC KEY-----\n")
    for text in (base64.b64encode(raw).decode(), base64.b64encode(spki).decode(), pem):
        assert bytes(load_public_key(text)) == raw


@pytest.mark.parametrize("text", ["not base64!!", base64.b64encode(b"x" * 31).decode(),
                                  base64.b64encode(b"\x30" * 44).decode()])
def test_telnyx_bad_keys_are_refused(text: str) -> None:
    with pytest.raises(KeyFormatError):
        load_public_key(text)


def test_telnyx_signature_verifies_raw_body_and_window() -> None:
    key, raw = _pair()
    now = 1_800_000_000
    v = TelnyxVerifier(base64.b64encode(raw).decode(), clock=lambda: now)
    body = b'{"data": {"id": "1"}}'
    assert v.check(body, _sign(key, now, body), str(now)) == ""
    # Re-serialised JSON (different bytes) must not verify.
    assert v.check(b'{"data":{"id":"1"}}', _sign(key, now, body), str(now)) != ""
    assert v.check(body, _sign(key, now - 301, body), str(now - 301)) != ""
    assert v.check(body, _sign(key, now + 301, body), str(now + 301)) != ""
    assert v.check(body, _sign(key, now - 299, body), str(now - 299)) == ""
    assert v.check(body, _sign(key, now, body), "") != ""
    assert v.check(body, "", str(now)) != ""
    assert v.check(body, _sign(key, now, body), "12.5") != ""


def test_telnyx_accepts_any_of_several_signatures() -> None:
    key, raw = _pair()
    other, _ = _pair()
    now = int(time.time())
    v = TelnyxVerifier(base64.b64encode(raw).decode())
    body = b"{}"
    header = f"{_sign(other, now, body)},{_sign(key, now, body)}"
    assert v.check(body, header, str(now)) == ""
    assert v.check(body, f"{_sign(other, now, body)},garbage", str(now)) != ""


def test_telnyx_tries_at_most_five_signatures() -> None:
    """90 comma-separated candidates cost 90 Ed25519 verifications per unauthenticated
    request: more than five are refused before any is tried."""
    key, raw = _pair()
    other, _ = _pair()
    now = int(time.time())
    v = TelnyxVerifier(base64.b64encode(raw).decode())
    body = b"{}"
    wrong = _sign(other, now, body)
    assert v.check(body, ",".join([wrong] * 4 + [_sign(key, now, body)]), str(now)) == ""
    reason = v.check(body, ",".join([wrong] * 89 + [_sign(key, now, body)]), str(now))
    assert reason == "more than 5 signatures in telnyx-signature-ed25519"
    calls = 0
    real_verify = type(v._key).verify

    def counting(self, *args):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return real_verify(self, *args)
    type(v._key).verify = counting   # type: ignore[method-assign]
    try:
        v.check(body, ",".join([wrong] * 90), str(now))
    finally:
        type(v._key).verify = real_verify   # type: ignore[method-assign]
    assert calls == 0


def test_stream_tokens_round_trip_and_refuse_forgeries() -> None:
    tokens = StreamTokens("KEY1")
    token = tokens.mint("v3:abc-123", "inbound", 300, now=1000)
    assert tokens.verify(token, now=1010) == "v3:abc-123"
    grant = tokens.read(token, now=1010)
    assert grant is not None and grant.direction == "inbound" and grant.expires == 1300
    assert grant.dial_ref == "" and len(grant.tag) == 18
    assert StreamTokens("KEY2").verify(token, now=1010) is None      # other key
    assert tokens.verify(token, now=1301) is None                     # expired
    payload, tag = token.split(".")
    forged = StreamTokens("KEY1").mint("v3:other", "inbound", now=1000).split(".")[0] + "." + tag
    assert tokens.verify(forged, now=1010) is None
    for junk in ("", ".", "a.b", "!!!.???", token + "x", "x" * 5000):
        assert tokens.verify(junk, now=1010) is None
    dialled = tokens.read(tokens.mint("out:ref-1", "outbound", now=1000), now=1010)
    assert dialled is not None and dialled.dial_ref == "ref-1"
    # Each carrier keys its tokens apart: a Twilio token is no Telnyx token, even with the
    # same secret.
    from patterd.carriers.twilio.stream_token import StreamTokens as TwilioTokens
    assert TwilioTokens("KEY1").verify(token, now=1010) is None