"""Every request our carrier REST clients make, checked against the carriers' official OpenAPI
descriptions by a request-validating mock server (Stoplight Prism, pinned in tests/openapi/).

Prism answers a request that matches its operation (path and query parameters, auth, content
type, body schema) with 2xx, an invalid one with 422 (its body lists the violations on the
Twilio file) and one without credentials with 401. The negative tests prove the mock really
validates, so a 2xx from it means something.

The specs live in /work/shared/specs (see its README); Prism needs Node.js and is installed from
tests/openapi/package-lock.json with ``npm ci`` when missing. Missing tools fail, never skip.
"""

from __future__ import annotations

import contextlib

import base64
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from patterd.carriers.rest import RestError
from patterd.carriers.telnyx.rest import TelnyxRest
from patterd.carriers.telnyx.webhooks import stream_url as telnyx_stream_url
from patterd.carriers.twilio import twiml
from patterd.carriers.twilio.rest import TwilioRest
from patterd.config import TelnyxSettings, TwilioSettings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
OPENAPI_DIR = ROOT / "tests" / "openapi"
PRISM = OPENAPI_DIR / "node_modules" / ".bin" / "prism"
SPECS = Path(os.environ.get("PATTERD_SPECS_DIR", "/work/shared/specs"))
TWILIO_SPEC = SPECS / "twilio_api_v2010.json"
TELNYX_SPEC = SPECS / "telnyx_call_control.json"
START_TIMEOUT = 60.0
PR_SET_PDEATHSIG = 1

# Identifiers shaped like the real ones (the spec's path patterns check them).
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "openapi-test-auth-token"
CALL_SID = "CA" + "fedcba9876543210" * 2
NUMBER_SID = "PN" + "00112233445566778899aabbccddeeff"
PHONE = "+15550001234"
PUBLIC_URL = "https://voice.example.com"
TELNYX_KEY = "KEY0123456789ABCDEF_openapi"
CALL_CONTROL_ID = "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg"


# --- the mock servers ----------------------------------------------------------------------------

def _ensure_prism() -> None:
    """Install the pinned Prism from the lock file when it is not there yet."""
    if PRISM.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(f"{PRISM} is missing and npm is not on PATH: install Node.js 20 with npm, "
                    f"then run `npm ci --prefix {OPENAPI_DIR.relative_to(ROOT)}`",
                    pytrace=False)
    proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(OPENAPI_DIR)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0 or not PRISM.exists():
        pytest.fail(f"`npm ci --prefix {OPENAPI_DIR}` failed (exit {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", pytrace=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Mock:
    """One running ``prism mock`` (its own process group, so nothing outlives the module)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def answers(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no env proxy
        try:
            with opener.open(self.url + "/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # 404 for "/" is an answer
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        else:  # the leader is gone; make sure no member of its group stayed behind
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _die_with_parent() -> None:
    """Linux: SIGTERM the mock if pytest itself is killed (so even a SIGKILLed run leaves no
    node process behind); elsewhere the fixture's finalizer is the only cleanup."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass


def _launch(name: str, spec: Path, log_dir: Path) -> Mock:
    if not spec.is_file():
        pytest.fail(f"OpenAPI description {spec} is missing (see {SPECS}/README.md)",
                    pytrace=False)
    port = _free_port()
    log_path = log_dir / f"prism-{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(PRISM), "mock", "-h", "127.0.0.1", "-p", str(port), str(spec)],
            cwd=OPENAPI_DIR, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent)
    return Mock(name, proc, port, log_path)


def _wait_ready(mocks: list[Mock]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(mocks)
    while pending:
        for mock in list(pending):
            if mock.proc.poll() is not None:
                raise RuntimeError(f"prism ({mock.name}) exited with {mock.proc.returncode}:\n"
                                   f"{mock.log_tail()}")
            if mock.answers():
                pending.remove(mock)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"prism ({pending[0].name}) did not answer within "
                               f"{START_TIMEOUT:.0f} s:\n{pending[0].log_tail()}")
        if pending:
            time.sleep(0.1)


@pytest.fixture(scope="module")
def mocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """Both mocks, started in parallel, killed (whole process group) at the end."""
    _ensure_prism()
    log_dir = tmp_path_factory.mktemp("prism")
    started: list[Mock] = []
    try:
        started.append(_launch("twilio", TWILIO_SPEC, log_dir))
        started.append(_launch("telnyx", TELNYX_SPEC, log_dir))
        try:
            _wait_ready(started)
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield SimpleNamespace(twilio=started[0], telnyx=started[1])
    finally:
        for mock in started:
            mock.stop()


# --- a session that records what went over the wire -------------------------------------------

@dataclass
class Exchange:
    method: str
    url: str
    status: int = 0
    content_type: str = ""
    body: bytearray = field(default_factory=bytearray)

    def __str__(self) -> str:
        return f"{self.method} {self.url} -> {self.status} {bytes(self.body[:2000])!r}"


@dataclass
class Wire:
    session: aiohttp.ClientSession
    exchanges: list[Exchange]

    def only(self) -> Exchange:
        assert len(self.exchanges) == 1, self.exchanges
        return self.exchanges[0]


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    exchanges: list[Exchange] = []
    trace = aiohttp.TraceConfig()

    async def on_start(_s: Any, ctx: SimpleNamespace, params: Any) -> None:
        ctx.exchange = Exchange(params.method, str(params.url))
        exchanges.append(ctx.exchange)

    async def on_headers_sent(_s: Any, ctx: SimpleNamespace, params: Any) -> None:
        ctx.exchange.content_type = params.headers.get("Content-Type", "")

    async def on_end(_s: Any, ctx: SimpleNamespace, params: Any) -> None:
        ctx.exchange.status = params.response.status

    async def on_chunk(_s: Any, ctx: SimpleNamespace, params: Any) -> None:
        ctx.exchange.body.extend(params.chunk)

    trace.on_request_start.append(on_start)
    trace.on_request_headers_sent.append(on_headers_sent)
    trace.on_request_end.append(on_end)
    trace.on_response_chunk_received.append(on_chunk)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield Wire(session, exchanges)


def _accepted(wire: Wire, mock: Mock) -> Exchange:
    """The one request sent, asserted 2xx, with Prism's verdict and log in the message."""
    ex = wire.only()
    assert 200 <= ex.status < 300, f"{ex}\n--- prism log ---\n{mock.log_tail()}"
    return ex


# --- Twilio -------------------------------------------------------------------------------------

def _twilio(wire: Wire, mocks: SimpleNamespace) -> TwilioRest:
    return TwilioRest(wire.session, TwilioSettings(ACCOUNT_SID, AUTH_TOKEN,
                                                   api_base_url=mocks.twilio.url))


TWILIO_ACCOUNT = f"/2010-04-01/Accounts/{ACCOUNT_SID}"
TWILIO_AUTH = {"Authorization": "Basic " + base64.b64encode(
    f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode("ascii")}


async def test_twilio_find_number(wire: Wire, mocks: SimpleNamespace) -> None:
    assert await _twilio(wire, mocks).find_number(PHONE) is None  # the example lists another
    ex = _accepted(wire, mocks.twilio)
    assert ex.method == "GET"
    assert ex.url == (f"{mocks.twilio.url}{TWILIO_ACCOUNT}/IncomingPhoneNumbers.json"
                      "?PhoneNumber=%2B15550001234")


async def test_twilio_configure_number_posts_voice_and_status_urls(
        wire: Wire, mocks: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    async def our_number(_self: TwilioRest, phone: str) -> dict[str, Any]:
        return {"sid": NUMBER_SID, "phone_number": phone}

    monkeypatch.setattr(TwilioRest, "find_number", our_number)
    sid = await _twilio(wire, mocks).configure_number(
        PHONE, f"{PUBLIC_URL}/webhooks/twilio/voice", f"{PUBLIC_URL}/webhooks/twilio/status")
    assert sid == NUMBER_SID
    ex = _accepted(wire, mocks.twilio)
    assert (ex.method, ex.url) == (
        "POST", f"{mocks.twilio.url}{TWILIO_ACCOUNT}/IncomingPhoneNumbers/{NUMBER_SID}.json")
    assert ex.content_type.startswith("application/x-www-form-urlencoded")


async def test_twilio_configure_number_end_to_end(wire: Wire, mocks: SimpleNamespace) -> None:
    """Unpatched: look the number up, then update it (the number the spec's example lists)."""
    async with wire.session.get(
            f"{mocks.twilio.url}{TWILIO_ACCOUNT}/IncomingPhoneNumbers.json",
            headers=TWILIO_AUTH) as resp:
        assert resp.status == 200, await resp.text()
        listed = (await resp.json())["incoming_phone_numbers"][0]
    wire.exchanges.clear()
    sid = await _twilio(wire, mocks).configure_number(
        listed["phone_number"], f"{PUBLIC_URL}/webhooks/twilio/voice",
        f"{PUBLIC_URL}/webhooks/twilio/status")
    assert sid == listed["sid"]
    assert [(e.method, e.status) for e in wire.exchanges] == [("GET", 200), ("POST", 200)], \
        "\n".join(map(str, wire.exchanges))


async def test_twilio_update_call_with_twiml(wire: Wire, mocks: SimpleNamespace) -> None:
    doc = twiml.connect_stream("wss://voice.example.com/media/twilio",
                               {"call_id": CALL_SID, "token": "t0k&<en>"})
    resp = await _twilio(wire, mocks).update_call(CALL_SID, [("Twiml", doc)])
    assert resp.ok, resp
    ex = _accepted(wire, mocks.twilio)
    assert ex.url == f"{mocks.twilio.url}{TWILIO_ACCOUNT}/Calls/{CALL_SID}.json"
    assert ex.content_type.startswith("application/x-www-form-urlencoded")


async def test_twilio_hangup(wire: Wire, mocks: SimpleNamespace) -> None:
    assert await _twilio(wire, mocks).hangup(CALL_SID) is True
    ex = _accepted(wire, mocks.twilio)  # a real 2xx, not the "already ended" shortcut
    assert (ex.method, ex.url) == ("POST",
                                   f"{mocks.twilio.url}{TWILIO_ACCOUNT}/Calls/{CALL_SID}.json")


async def test_twilio_fetch_call_for_its_price(wire: Wire, mocks: SimpleNamespace) -> None:
    """The price fetch after a call completed (FetchCall); the spec's example is priced."""
    from patterd.carriers.twilio.price import read_price
    resource = await _twilio(wire, mocks).fetch_call(CALL_SID)
    ex = _accepted(wire, mocks.twilio)
    assert (ex.method, ex.url) == ("GET",
                                   f"{mocks.twilio.url}{TWILIO_ACCOUNT}/Calls/{CALL_SID}.json")
    assert read_price(resource) == (-0.2, "USD")
    wire.exchanges.clear()
    with pytest.raises(RestError) as info:     # the mock checks this path too
        await _twilio(wire, mocks).fetch_call("CA123")
    assert info.value.status == 422


# The mock validates: the same requests, deliberately wrong, are refused.

async def test_twilio_mock_refuses_a_bad_field_value(wire: Wire, mocks: SimpleNamespace) -> None:
    resp = await _twilio(wire, mocks).update_call(CALL_SID, [("Status", "finished")])
    assert resp.status == 422, resp
    assert any(v.get("location") == ["body", "Status"] and v.get("code") == "enum"
               for v in resp.body["validation"]), resp.body


async def test_twilio_mock_refuses_a_malformed_sid(wire: Wire, mocks: SimpleNamespace) -> None:
    resp = await _twilio(wire, mocks).update_call("CA123", [("Status", "completed")])
    assert resp.status == 422, resp
    assert any(v.get("location") == ["path", "sid"] for v in resp.body["validation"]), resp.body


async def test_twilio_mock_refuses_a_bad_voice_method(wire: Wire,
                                                      mocks: SimpleNamespace) -> None:
    rest = _twilio(wire, mocks)
    resp = await rest._client.request(
        "POST", f"/IncomingPhoneNumbers/{NUMBER_SID}.json",
        form=[("VoiceUrl", f"{PUBLIC_URL}/webhooks/twilio/voice"), ("VoiceMethod", "PUT")])
    assert resp.status == 422, resp
    assert any(v.get("location") == ["body", "VoiceMethod"] for v in resp.body["validation"])


async def test_twilio_mock_refuses_missing_auth(wire: Wire, mocks: SimpleNamespace) -> None:
    async with wire.session.post(f"{mocks.twilio.url}{TWILIO_ACCOUNT}/Calls/{CALL_SID}.json",
                                 data={"Status": "completed"}) as resp:
        assert resp.status == 401, await resp.text()


async def test_twilio_mock_refuses_a_json_body(wire: Wire, mocks: SimpleNamespace) -> None:
    resp = await _twilio(wire, mocks)._client.request(
        "POST", f"/Calls/{CALL_SID}.json", json_body={"Status": "completed"})
    assert resp.status == 415, resp


# --- Telnyx -------------------------------------------------------------------------------------
# The spec's server is https://api.telnyx.com/v2 and its paths start at /calls: Prism serves them
# at the root, so api_base_url is the mock's bare origin. Its error bodies are the spec's
# examples, so only status codes are asserted.

def _telnyx(wire: Wire, mocks: SimpleNamespace) -> TelnyxRest:
    return TelnyxRest(wire.session, TelnyxSettings(TELNYX_KEY, api_base_url=mocks.telnyx.url))


def _action_url(mocks: SimpleNamespace, action: str) -> str:
    # quote(..., safe="") sends "v3%3A…"; yarl normalises the unreserved-in-a-path ":" back.
    return f"{mocks.telnyx.url}/calls/{CALL_CONTROL_ID}/actions/{action}"


async def test_telnyx_answer_with_stream(wire: Wire, mocks: SimpleNamespace) -> None:
    state = {"call_id": CALL_CONTROL_ID, "direction": "incoming"}
    resp = await _telnyx(wire, mocks).answer(
        CALL_CONTROL_ID, telnyx_stream_url(PUBLIC_URL, "tok.en-1"), state)
    assert resp.ok
    ex = _accepted(wire, mocks.telnyx)
    assert (ex.method, ex.url) == ("POST", _action_url(mocks, "answer"))
    assert ex.content_type.startswith("application/json")


async def test_telnyx_reject_user_busy(wire: Wire, mocks: SimpleNamespace) -> None:
    assert (await _telnyx(wire, mocks).reject(CALL_CONTROL_ID)).ok
    ex = _accepted(wire, mocks.telnyx)
    assert (ex.method, ex.url) == ("POST", _action_url(mocks, "reject"))


async def test_telnyx_hangup(wire: Wire, mocks: SimpleNamespace) -> None:
    assert await _telnyx(wire, mocks).hangup(CALL_CONTROL_ID) is True
    ex = _accepted(wire, mocks.telnyx)  # a real 2xx, not the "already ended" shortcut
    assert (ex.method, ex.url) == ("POST", _action_url(mocks, "hangup"))


async def test_telnyx_mock_refuses_a_bad_cause(wire: Wire, mocks: SimpleNamespace) -> None:
    with pytest.raises(RestError) as info:
        await _telnyx(wire, mocks).reject(CALL_CONTROL_ID, "NO_ANSWER")
    assert info.value.status == 422


async def test_telnyx_mock_refuses_a_bad_codec(wire: Wire, mocks: SimpleNamespace) -> None:
    resp = await _telnyx(wire, mocks).command(CALL_CONTROL_ID, "answer", {
        "stream_url": "wss://voice.example.com/media/telnyx/x",
        "stream_bidirectional_mode": "rtp", "stream_bidirectional_codec": "pcmu"})
    assert resp.status == 422


async def test_telnyx_mock_refuses_missing_auth(wire: Wire, mocks: SimpleNamespace) -> None:
    async with wire.session.post(_action_url(mocks, "hangup"), json={}) as resp:
        assert resp.status == 401


# --- Call control: outbound calls, recording, voicemail, transfer, DTMF ----------------------

def _twilio_control(wire: Wire, mocks: SimpleNamespace):  # type: ignore[no-untyped-def]
    from patterd.carriers.twilio.control import TwilioControl
    from patterd.carriers.twilio.stream_token import StreamTokens
    from patterd.config import build_config
    cfg = build_config({"server": {"public_url": PUBLIC_URL}, "phone_number": PHONE,
                        "carrier": {"provider": "twilio", "account_sid": ACCOUNT_SID,
                                    "auth_token": AUTH_TOKEN, "configure_number": False,
                                    "api_base_url": mocks.twilio.url}}, env={})
    return TwilioControl(wire.session, cfg.carrier, cfg, "wss://voice.example.com/media/twilio",
                         StreamTokens(AUTH_TOKEN))


def _only_repeated_key_complaints(wire: Wire, mock: Mock, repeated: set[str]) -> Exchange:
    """Twilio takes list fields as one form field per value (``A=x&A=y``, as twilio-python
    sends them); Prism cannot decode repeated form keys into the spec's arrays and reports
    exactly those fields as "must be array". Any other violation fails the test."""
    import json as _json
    ex = wire.only()
    if 200 <= ex.status < 300:
        return ex
    assert ex.status == 422, f"{ex}\n--- prism log ---\n{mock.log_tail()}"
    violations = _json.loads(ex.body)["validation"]
    others = [v for v in violations if not (v["code"] == "type"
                                            and v["location"][-1] in repeated)]
    assert not others, f"{others}\n--- prism log ---\n{mock.log_tail()}"
    return ex


async def test_twilio_outbound_call_with_amd(wire: Wire, mocks: SimpleNamespace) -> None:
    from patterd.call.outbound import OutboundCall
    from patterd.carriers.rest import RestError
    control = _twilio_control(wire, mocks)
    with contextlib.suppress(RestError):
        await control.dial(OutboundCall("+15557654321", True, "Please call back.",
                                        {"name": "A"}))
    ex = _only_repeated_key_complaints(wire, mocks.twilio, {"StatusCallbackEvent"})
    assert (ex.method, ex.url) == ("POST", f"{mocks.twilio.url}{TWILIO_ACCOUNT}/Calls.json")


async def test_twilio_start_recording(wire: Wire, mocks: SimpleNamespace) -> None:
    from patterd.carriers.rest import RestError
    with contextlib.suppress(RestError):
        await _twilio_control(wire, mocks).start_recording(CALL_SID, "dual")
    ex = _only_repeated_key_complaints(wire, mocks.twilio, {"RecordingStatusCallbackEvent"})
    assert ex.url == f"{mocks.twilio.url}{TWILIO_ACCOUNT}/Calls/{CALL_SID}/Recordings.json"


async def test_twilio_voicemail_transfer_and_dtmf(wire: Wire, mocks: SimpleNamespace) -> None:
    control = _twilio_control(wire, mocks)
    for act in (lambda: control.say_and_hangup(CALL_SID, "Bye & thanks"),
                lambda: control.transfer(CALL_SID, "+15550009999"),
                lambda: control.send_dtmf(CALL_SID, "1w2#", {"call_id": CALL_SID})):
        wire.exchanges.clear()
        assert await act() is True
        _accepted(wire, mocks.twilio)


def _telnyx_control(wire: Wire, mocks: SimpleNamespace):  # type: ignore[no-untyped-def]
    from patterd.carriers.telnyx.control import TelnyxControl
    from patterd.carriers.telnyx.stream_token import StreamTokens
    from patterd.config import build_config
    from tests.support.signing import TelnyxSigner
    cfg = build_config({"server": {"public_url": PUBLIC_URL}, "phone_number": PHONE,
                        "carrier": {"provider": "telnyx", "api_key": TELNYX_KEY,
                                    "connection_id": "1494404757140276705",
                                    "public_key": TelnyxSigner().public_key_b64,
                                    "api_base_url": mocks.telnyx.url}}, env={})
    return TelnyxControl(wire.session, cfg.carrier, cfg, StreamTokens(TELNYX_KEY),
                         lambda token: telnyx_stream_url(PUBLIC_URL, token))


async def test_telnyx_outbound_call_with_amd(wire: Wire, mocks: SimpleNamespace) -> None:
    from patterd.call.outbound import OutboundCall
    await _telnyx_control(wire, mocks).dial(OutboundCall("+15557654321", True, "Call back."))
    ex = _accepted(wire, mocks.telnyx)
    assert (ex.method, ex.url) == ("POST", f"{mocks.telnyx.url}/calls")


async def test_telnyx_record_speak_transfer_dtmf(wire: Wire, mocks: SimpleNamespace) -> None:
    control = _telnyx_control(wire, mocks)
    for action, act in (("record_start", lambda: control.start_recording(CALL_CONTROL_ID, "dual")),
                        ("speak", lambda: control.say_and_hangup(CALL_CONTROL_ID, "Call back.")),
                        ("transfer", lambda: control.transfer(CALL_CONTROL_ID, "+15550009999")),
                        ("send_dtmf", lambda: control.send_dtmf(CALL_CONTROL_ID, "1w2#", {}))):
        wire.exchanges.clear()
        assert await act()
        ex = _accepted(wire, mocks.telnyx)
        assert ex.url == _action_url(mocks, action)
