"""Fuzzing every carrier webhook route (the routes in the README) with Hypothesis.

Each route test starts one daemon app on a real 127.0.0.1 socket (for Telnyx also the fake
Telnyx REST API it answers calls through) in a private event loop, then sends 1,000 generated
requests to it, one per example, from synchronous code. Most bodies are signed exactly as the
carrier signs them (twilio-python's RequestValidator, Ed25519 with PyNaCl) so that they reach
past the signature check; the rest are unsigned, badly signed, stale, of the wrong content type
or larger than ``server.max_body_bytes``.

For every request the expected answer is worked out from the input alone and asserted:
2xx for a valid webhook, 400 for a malformed one, 403 for a bad signature, 413 for a body that
is too large, 400/415 for a wrong content type, where an input is ambiguous (e.g. a repeated
field, an id of 10,000 characters) the set of acceptable answers is wider, but it never
contains a 5xx. Afterwards the daemon must still be healthy, answer a valid call, have logged
no error, and ``patterd_webhook_requests_total`` must match, code by code, what was sent.

The run is derandomized, so CI sees the same 1,000 requests every time.
"""

from __future__ import annotations

import re

import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import logging
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from patterd.app import build_app
from patterd.gateway import GATEWAY
from patterd.ops.logging import configure_logging
from patterd.patter import carrier_for
from patterd.carriers.ids import TELNYX_CALL_CONTROL_ID
from tests.conftest import PHONE, TELNYX_KEY, config, telnyx_raw, twilio_raw
from tests.support.fake_carriers import FakeTelnyx, FakeTwilio
from tests.support.signing import (PUBLIC_URL, TWILIO_SID, TWILIO_TOKEN, TelnyxSigner, call_sid,
                                   telnyx_event, twilio_form)

pytestmark = pytest.mark.slow

MAX_BODY = 65536
SERVER = {"max_calls": 1_000_000, "max_body_bytes": MAX_BODY}
EXAMPLES = 1000
# The daemon's periodic loops run until shutdown: a request's background work is the rest.
# Background work no request is waiting on: periodic loops, and the check that a Telnyx call
# whose stream stopped is reported ended within the grace (call/recovery.py).
LOOPS = frozenset({"telnyx-streaming.stopped"})

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,        # the same requests on every run: reproducible in CI
    database=None,           # nothing written to .hypothesis/
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.large_base_example],
)

TWILIO_PATHS = {route: f"/webhooks/twilio/{route}"
                for route in ("voice", "status", "recording", "amd")}
TELNYX_PATH = "/webhooks/telnyx/voice"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


# --------------------------------------------------------------------------- the harness


@dataclass
class Req:
    """One request to send and the answers it may get."""

    path: str
    body: bytes
    headers: dict[str, str]
    allowed: frozenset[int]
    note: str
    query: str = ""
    chunked: bool = False
    expect100: bool = False
    twiml_sids: tuple[str, ...] = ()       # voice: a 200 must be <Connect><Stream> for one of these
    event_id: str | None = None            # Telnyx: the id a 200 acknowledges


    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # Hypothesis's printer
        printer.text(repr(self))

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        body = self.body if len(self.body) <= 300 else (
            self.body[:200] + b"...<%d bytes>..." % len(self.body) + self.body[-50:])
        return (f"Req({self.note!r}, POST {self.path}{'?' + self.query if self.query else ''}, "
                f"headers={self.headers!r}, body={body!r}, allowed={sorted(self.allowed)}"
                f"{', chunked' if self.chunked else ''})")


@dataclass
class Reply:
    status: int
    content_type: str
    text: str


class LogSink:
    """Where the daemon's production-style JSON logs go during a run; keeps the errors."""

    def __init__(self) -> None:
        self.lines = 0
        self.errors: list[str] = []
        self.aiohttp_payload_errors = 0
        self._partial = ""

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self.lines += 1
            try:
                level = json.loads(line).get("level", "")
            except (ValueError, AttributeError):
                level = "error" if "Traceback" in line else ""
            if level in ("error", "critical", "exception"):
                self.errors.append(line[:6000])
        return len(text)


@contextlib.contextmanager
def production_logging(sink: LogSink) -> Iterator[None]:
    """The daemon's own logging set-up (JSON lines, masking), written to ``sink``; restored
    afterwards so that other tests keep theirs."""
    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    access = logging.getLogger("aiohttp.access")
    saved_access = access.level
    # configure_logging binds sys.stderr as it is at the time of the call
    with contextlib.redirect_stderr(sink):  # type: ignore[type-var]
        configure_logging("info", "json")

    def lingering_payload_error(record: logging.LogRecord) -> bool:
        # aiohttp itself logs "Unhandled exception" when, after the handler answered, it
        # drains a body that does not decode (e.g. Content-Encoding: gzip on plain bytes).
        # Not the daemon's code: counted, not treated as an error of the daemon.
        exc = record.exc_info[1] if record.exc_info else None
        if record.name.startswith("aiohttp") and type(exc).__name__ == "RequestPayloadError":
            sink.aiohttp_payload_errors += 1
            return False
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(lingering_payload_error)
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        access.setLevel(saved_access)


class Daemon:
    """The daemon app on 127.0.0.1, driven synchronously through a private event loop."""

    def __init__(self, carrier: str, signer: TelnyxSigner | None = None) -> None:
        self.carrier = carrier
        self.signer = signer
        self.loop = asyncio.new_event_loop()
        self.sink = LogSink()
        self.sent: Counter[str] = Counter()                # endpoint → requests
        self.codes: Counter[tuple[str, str]] = Counter()   # (endpoint, status) → requests
        self.seen_event_ids: set[str] = set()              # Telnyx ids acknowledged with 200
        self.accepted: list[bytes] = []                    # Telnyx bodies answered "ok"
        self.serial = 0
        self._stack = contextlib.ExitStack()

    # lifecycle

    def __enter__(self) -> Daemon:
        self._stack.enter_context(production_logging(self.sink))
        try:
            self.run(self._start())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self._stop())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
            self._stack.close()

    async def _start(self) -> None:
        self.fake: FakeTelnyx | None = None
        self.fake_server: TestServer | None = None
        if self.carrier == "telnyx":
            assert self.signer is not None
            self.fake = FakeTelnyx(TELNYX_KEY)
            self.fake_server = TestServer(self.fake.app(), host="127.0.0.1")
            await self.fake_server.start_server()
            raw = telnyx_raw(self.signer.public_key_b64, server=SERVER,
                             carrier={"api_base_url": str(self.fake_server.make_url("/v2"))})
        else:
            # Twilio's REST API stand-in on 127.0.0.1 (AMD hang-ups, price fetches)
            self.fake_server = TestServer(FakeTwilio(TWILIO_SID, TWILIO_TOKEN, []).app(),
                                          host="127.0.0.1")
            await self.fake_server.start_server()
            raw = twilio_raw(server=SERVER,
                             carrier={"api_base_url": str(self.fake_server.make_url("")).rstrip("/")})
        cfg = config(raw)
        # Instant stand-ins for STT/TTS, as the suite's ``daemon`` fixture uses: webhooks
        # never touch them.
        from tests.support.stub_backends import stub_backends
        self.app = build_app(cfg, carrier_for(cfg.carrier), backends=stub_backends(cfg))
        self.server = TestServer(self.app, host="127.0.0.1")
        await self.server.start_server()
        self.base = str(self.server.make_url("")).rstrip("/")
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4))
        await self._settle(set())

    async def _stop(self) -> None:
        if getattr(self, "http", None) is not None:
            await self.http.close()
        if getattr(self, "server", None) is not None:
            await self.server.close()
        if getattr(self, "fake_server", None) is not None:
            await self.fake_server.close()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _settle(self, before: set[Any], timeout: float = 15.0) -> None:
        """Wait for the background work started since ``before`` (Telnyx answers through
        REST), so that its failures are pinned on the request that caused them."""
        tasks = [t for t in self.app[GATEWAY].tasks
                 if t not in before and t.get_name() not in LOOPS
                 and not t.get_name().startswith("supervised-")]   # the supervised loops
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # requests

    async def _send(self, req: Req) -> Reply:
        url = URL(self.base + req.path + (f"?{req.query}" if req.query else ""), encoded=True)
        skip = () if any(k.lower() == "content-type" for k in req.headers) else ("Content-Type",)
        data: Any = req.body
        if req.chunked:
            async def chunks() -> Any:
                for i in range(0, len(req.body), 16384):
                    yield req.body[i:i + 16384]
            data = chunks()
        before = set(self.app[GATEWAY].tasks)
        async with self.http.post(url, data=data, headers=req.headers, skip_auto_headers=skip,
                                  expect100=req.expect100) as resp:
            raw = await resp.read()
            reply = Reply(resp.status, resp.content_type, raw.decode("utf-8", "replace"))
        await self._settle(before)
        return reply

    def send(self, req: Req) -> Reply:
        """Send ``req`` and check the answer against what the input allows."""
        errors_before = len(self.sink.errors)
        reply = self.run(self._send(req))
        endpoint = req.path.rsplit("/", 1)[-1]
        self.sent[endpoint] += 1
        self.codes[(endpoint, str(reply.status))] += 1
        new_errors = self.sink.errors[errors_before:]
        context = (f"{req.note}: POST {req.path}{'?' + req.query if req.query else ''} "
                   f"headers={req.headers!r} body[{len(req.body)}]={req.body[:400]!r} → "
                   f"{reply.status} {reply.text[:300]!r}"
                   + ("\nlogged errors:\n" + "\n".join(new_errors) if new_errors else ""))
        assert reply.status < 500, context
        assert reply.status in req.allowed, f"expected one of {sorted(req.allowed)}; {context}"
        assert not new_errors, context
        if reply.status == 200 and req.twiml_sids:
            assert reply.content_type == "text/xml", context
            assert "<Connect><Stream " in reply.text, context
            assert any(sid in reply.text for sid in req.twiml_sids), context
        if reply.status == 200 and req.path == TELNYX_PATH:
            assert req.event_id is not None, context
            want = "duplicate" if req.event_id in self.seen_event_ids else "ok"
            assert json.loads(reply.text) == {"status": want}, context
            if want == "ok" and len(self.accepted) < 500:
                self.accepted.append(req.body)
            self.seen_event_ids.add(req.event_id)
        return reply

    def get(self, path: str) -> Reply:
        async def go() -> Reply:
            async with self.http.get(self.base + path) as resp:
                return Reply(resp.status, resp.content_type, await resp.text())
        return self.run(go())

    # the checks after a run

    def assert_still_serving(self) -> None:
        assert self.get("/healthz").status == 200
        if self.carrier == "twilio":
            sid = call_sid(0xC0FFEE)
            body, headers = twilio_form(PUBLIC_URL + TWILIO_PATHS["voice"],
                                        {"CallSid": sid, "AccountSid": TWILIO_SID,
                                         "From": "+15557654321", "To": PHONE,
                                         "CallStatus": "ringing", "Direction": "inbound"})
            self.send(Req(TWILIO_PATHS["voice"], body, headers, frozenset({200}),
                          "final valid voice webhook", twiml_sids=(sid,)))
        else:
            assert self.signer is not None and self.fake is not None
            ccid = "v3:final-call-after-fuzzing"
            body = telnyx_event("call.initiated", {
                "call_control_id": ccid, "direction": "incoming", "from": "+15557654321",
                "to": PHONE, "state": "parked"}, event_id="evt-final-after-fuzzing")
            self.send(Req(TELNYX_PATH, body, self.signer.sign(body), frozenset({200}),
                          "final valid call.initiated", event_id="evt-final-after-fuzzing"))
            answers = [r for r in self.fake.requests
                       if r.path == f"/v2/calls/{ccid}/actions/answer"]
            assert len(answers) == 1, self.fake.requests[-3:]
            assert answers[0].json["stream_url"].startswith("wss://voice.example.com/")

    def assert_metrics_add_up(self) -> None:
        reply = self.get("/metrics")
        assert reply.status == 200
        counted: Counter[tuple[str, str]] = Counter()
        for family in text_string_to_metric_families(reply.text):
            for sample in family.samples:
                if sample.name == "patterd_webhook_requests_total":
                    assert sample.labels["carrier"] == self.carrier, sample
                    counted[(sample.labels["endpoint"], sample.labels["code"])] += \
                        int(sample.value)
        assert not [k for k in counted if k[1].startswith("5")], counted
        assert counted == self.codes, (counted, self.codes)
        for endpoint, n in self.sent.items():
            assert sum(v for (e, _), v in counted.items() if e == endpoint) == n

    def assert_clean_run(self, endpoint: str) -> None:
        self.run(self._settle(set()))
        assert self.sent[endpoint] >= EXAMPLES, self.sent
        self.assert_still_serving()
        self.assert_metrics_add_up()
        assert not self.sink.errors, "\n".join(self.sink.errors[:5])


# --------------------------------------------------------------------------- value pools

# Plain strings (no lone surrogates: those cannot be form-encoded) that stress parsers:
# numbers that str.isdigit() accepts but int() does not, other scripts' digits, sid look-alikes,
# statuses in the wrong case, markup, controls, long runs.
WEIRD = [
    "", " ", "0", "1", "-1", "+1", "01", "1.0", "1e3", "0x1f", "1_000", "NaN", "null", "None",
    "true", "[]", "{}", "9" * 9, "9" * 10, "9" * 40, "²", "³", "¹²³", "⁰", "١٢٣", "٣", "𝟏𝟐",
    "５", "Ⅻ", "½", "\x00", "\r\n", "\t1", "1 ", " 1", "completed", "Completed", "COMPLETED",
    "in_progress", "no_answer", "in-progress", "ringing", "answered", "initiated", "human",
    "Human", "machine", "fax", "absent", "paused", "CA", "CA" + "0" * 32, "CA" + "F" * 32,
    "ca" + "0" * 32, "CA" + "0" * 31, "CA" + "0" * 33, "CA" + "g" * 32,
    "CA" + "0" * 32 + "\n", " CA" + "0" * 32, "CA" + "０" * 32, "CA" + "٠" * 32,
    "RE" + "0" * 32, "AC" + "0" * 32, "<Response/>", "\"'><&", "]]>", "%00", "%", "+", "&",
    "=", "é", "😀", "\u202e", "\ufeff", "\u0000\u0001", "a" * 5000,
]
# And for JSON bodies also lone surrogates, which JSON's \\u escapes can carry.
JSON_WEIRD = WEIRD + ["\ud800", "\udfff", "a\udc80b", "\ud83d"]

FIELD_NAMES = ["CallSid", "callsid", "CALLSID", "CallSid ", " CallSid", "Call Sid", "CallSid[]",
               "CallStatus", "SequenceNumber", "CallDuration", "RecordingSid", "RecordingStatus",
               "RecordingDuration", "AnsweredBy", "MachineDetectionDuration", "From", "To",
               "Direction", "Timestamp", "AccountSid", "", "é", "X-Twilio-Signature"]

TEXT = st.text(max_size=30)
HUGE = st.builds(lambda unit, n: (unit * n)[:n], st.text(min_size=1, max_size=4),
                 st.integers(500, 70_000))
SID_LIKE = st.builds(lambda prefix, body: prefix + body,
                     st.sampled_from(["CA", "RE", "ca", "", "CA "]),
                     st.text(alphabet="0123456789abcdefABCDEFgxz", min_size=28, max_size=36))
WEIRD_VALUE = st.one_of(st.sampled_from(WEIRD), TEXT, SID_LIKE,
                        st.integers(-10**12, 10**12).map(str))

JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                        st.sampled_from(JSON_WEIRD), TEXT)
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4),
    max_leaves=12)


def has_lone_surrogate(value: Any) -> bool:
    """Whether decoded JSON carries a lone surrogate (not a Unicode scalar value: a server may
    refuse such a body with 400)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any("\ud800" <= ch <= "\udfff" for ch in item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def dump_json(value: Any, ascii_only: bool) -> bytes:
    """JSON text; with ``ascii_only`` false a lone surrogate becomes invalid UTF-8."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------- Twilio oracle

OK, BAD, EITHER = "ok", "bad", "either"
MISSING: Any = object()

# From Twilio's documentation: the values a webhook carries. Values the docs mention only as
# event names (initiated, answered) or for other products may be accepted or refused.
DOC_CALL_STATUSES = ["queued", "ringing", "in-progress", "completed", "busy", "failed",
                     "no-answer", "canceled"]
OTHER_CALL_STATUSES = {"initiated", "answered"}
DOC_RECORDING_STATUSES = ["in-progress", "completed", "absent"]
OTHER_RECORDING_STATUSES = {"failed", "paused", "stopped", "processing"}
DOC_ANSWERED_BY = ["human", "machine_start", "machine_end_beep", "machine_end_silence",
                   "machine_end_other", "fax", "unknown"]

# field → kind, per route: what a handler needs to act on the webhook.
ROUTE_FIELDS = {
    "voice": {"CallSid": "call_sid"},
    "status": {"CallSid": "call_sid", "CallStatus": "call_status",
               "SequenceNumber": "count", "CallDuration": "count"},
    "recording": {"CallSid": "call_sid", "RecordingSid": "recording_sid",
                  "RecordingStatus": "recording_status", "RecordingDuration": "count"},
    "amd": {"CallSid": "call_sid", "AnsweredBy": "answered_by",
            "MachineDetectionDuration": "count"},
}
SUCCESS = {"voice": frozenset({200}), "status": frozenset({200, 204}),
           "recording": frozenset({200, 204}), "amd": frozenset({200, 204})}
HEX = frozenset("0123456789abcdef")


def _sid(prefix: str, value: str) -> str:
    body = value[2:]
    if value[:2] != prefix or len(body) != 32 or not body.isascii():
        return BAD
    if set(body) <= HEX:
        return OK
    return EITHER if set(body.lower()) <= HEX else BAD


def field_verdict(kind: str, value: Any) -> str:
    """Whether one field's value is valid (OK), malformed (BAD) or debatable (EITHER)."""
    if value is MISSING or value == "":
        return OK if kind == "count" else BAD
    if not isinstance(value, str):  # only from JSON bodies
        if kind != "count" or isinstance(value, (list, dict)):
            return BAD
        if isinstance(value, bool) or value is None or isinstance(value, float):
            return EITHER
        if value < 0:
            return BAD
        return OK if value < 10**9 else EITHER
    if kind == "count":  # a non-negative integer in ASCII digits
        if value.isascii() and value.isdigit():
            return OK if len(value) <= 9 else EITHER
        return EITHER if value.isdecimal() else BAD
    if kind == "call_sid":
        return _sid("CA", value)
    if kind == "recording_sid":
        return _sid("RE", value)
    if kind == "call_status":
        return OK if value in DOC_CALL_STATUSES else \
            EITHER if value in OTHER_CALL_STATUSES else BAD
    if kind == "recording_status":
        return OK if value in DOC_RECORDING_STATUSES else \
            EITHER if value in OTHER_RECORDING_STATUSES else BAD
    if kind == "answered_by":
        return OK if value in DOC_ANSWERED_BY else BAD
    raise AssertionError(kind)


def twilio_allowed(route: str, readings: list[dict[str, Any]]) -> set[int]:
    """The acceptable answers to signed fields; ``readings`` are the ways a server may read
    them (first or last of a repeated field)."""
    allowed: set[int] = set()
    for params in readings:
        verdicts = {field_verdict(kind, params.get(name, MISSING))
                    for name, kind in ROUTE_FIELDS[route].items()}
        if BAD in verdicts:
            allowed.add(400)
        elif EITHER in verdicts:
            allowed |= {400} | SUCCESS[route]
        else:
            allowed |= SUCCESS[route]
    return allowed


def readings(items: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Last-wins and first-wins views of form fields."""
    first: dict[str, Any] = {}
    for k, v in items:
        first.setdefault(k, v)
    return [dict(items), first]


def twiml_sids(route: str, views: list[dict[str, Any]]) -> tuple[str, ...]:
    if route != "voice":
        return ()
    return tuple(v["CallSid"] for v in views if isinstance(v.get("CallSid"), str))


def twilio_signature(url: str, items: list[tuple[str, str]], token: str = TWILIO_TOKEN) -> str:
    """X-Twilio-Signature by twilio-python's RequestValidator."""
    return twilio_form(url, items, token)[1]["X-Twilio-Signature"]


def strict_form(body: bytes) -> list[tuple[str, str]] | None:
    """The fields of a well-formed UTF-8 form body, or None."""
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True,
                         errors="strict") if body else []
    except (ValueError, UnicodeDecodeError):
        return None


def form_allowed(route: str, items: list[tuple[str, str]]) -> set[int]:
    allowed = twilio_allowed(route, readings(items))
    if len(items) > 100:  # a server may bound the number of fields
        allowed.add(400)
    return allowed


# --------------------------------------------------------------------------- Twilio strategies


@st.composite
def twilio_items(draw: st.DrawFn, route: str) -> list[tuple[str, str]]:
    """Form fields as Twilio sends them for ``route``, then mutated."""
    sid = call_sid(draw(st.integers(0, 2**128 - 1)))
    items = [("AccountSid", TWILIO_SID), ("ApiVersion", "2010-04-01"), ("CallSid", sid)]
    direction = draw(st.sampled_from(["inbound", "outbound-api", "outbound-dial"]))
    caller = "+1555" + f"{draw(st.integers(0, 9_999_999)):07d}"
    if route == "voice":
        items += [("From", caller), ("To", PHONE), ("CallStatus", "ringing"),
                  ("Direction", direction), ("Caller", caller), ("CallerCountry", "US")]
    elif route == "status":
        items += [("CallStatus", draw(st.sampled_from(DOC_CALL_STATUSES))),
                  ("SequenceNumber", str(draw(st.integers(0, 20)))),
                  ("Timestamp", "Thu, 26 Nov 2026 10:00:00 +0000"),
                  ("Direction", direction), ("From", caller), ("To", PHONE),
                  ("CallbackSource", "call-progress-events")]
        if draw(st.booleans()):
            items.append(("CallDuration", str(draw(st.integers(0, 7200)))))
    elif route == "recording":
        rec = "RE" + f"{draw(st.integers(0, 2**128 - 1)):032x}"
        items += [("RecordingSid", rec),
                  ("RecordingStatus", draw(st.sampled_from(DOC_RECORDING_STATUSES))),
                  ("RecordingDuration", str(draw(st.integers(0, 7200)))),
                  ("RecordingUrl", f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}"
                                   f"/Recordings/{rec}"),
                  ("RecordingChannels", draw(st.sampled_from(["1", "2"]))),
                  ("RecordingSource", "StartCallRecordingAPI")]
    else:
        items += [("AnsweredBy", draw(st.sampled_from(DOC_ANSWERED_BY))),
                  ("MachineDetectionDuration", str(draw(st.integers(0, 30_000))))]
    important = [*ROUTE_FIELDS[route], "From", "To", "Direction", "Timestamp"]
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 1, 1, 2, 3, 6]))):
        op = draw(st.sampled_from(["set", "set", "set", "set", "drop", "repeat", "extra",
                                   "huge", "many", "rename"]))
        names = [k for k, _ in items] or ["CallSid"]
        if op == "set":
            name = draw(st.sampled_from(important))
            value = draw(WEIRD_VALUE)
            items = [(k, v) for k, v in items if k != name]
            items.insert(draw(st.integers(0, len(items))), (name, value))
        elif op == "drop":
            name = draw(st.sampled_from(names))
            items = [(k, v) for k, v in items if k != name]
        elif op == "repeat":
            name = draw(st.sampled_from(names))
            items.insert(draw(st.integers(0, len(items))), (name, draw(WEIRD_VALUE)))
        elif op == "extra":
            name = draw(st.one_of(st.sampled_from(FIELD_NAMES), TEXT))
            items.insert(draw(st.integers(0, len(items))), (name, draw(WEIRD_VALUE)))
        elif op == "huge":
            name = draw(st.sampled_from([*names, *important]))
            items = [(k, v) for k, v in items if k != name] + [(name, draw(HUGE))]
        elif op == "many":
            items += [(f"X{i}", str(i)) for i in range(draw(st.integers(50, 400)))]
        else:
            name = draw(st.sampled_from(names))
            new = draw(st.sampled_from([name.lower(), name.upper(), name + " ", " " + name,
                                        name + "[]"]))
            items = [(new if k == name else k, v) for k, v in items]
    return items


def _signed_form_req(route: str, items: list[tuple[str, str]], note: str) -> Req:
    path = TWILIO_PATHS[route]
    body, headers = twilio_form(PUBLIC_URL + path, items)
    allowed = {413} if len(body) > MAX_BODY else form_allowed(route, items)
    return Req(path, body, headers, frozenset(allowed), note,
               twiml_sids=twiml_sids(route, readings(items)))


# ~20 KB of gzip that inflates to 20 MB.
BOMB = gzip.compress(b"CallSid=" + b"0" * 20_000_000, 9)
RAW_JUNK = ["%", "%z", "%zz", "%f", "%ff", "%c3%28", "%ed%a0%80", "%f4%90%80%80", "%00", "%C0%AF",
            "%e2%82", "&&", "&=", "==", ";", "&a", "=&", "+%2B", "%%41"]


@st.composite
def twilio_raw_body(draw: st.DrawFn, route: str) -> bytes:
    kind = draw(st.sampled_from(["binary", "chars", "percent", "percent", "latin1",
                                 "latin1_raw", "utf16", "semicolons"]))
    if kind == "binary":
        return draw(st.binary(max_size=400))
    if kind == "chars":
        return draw(st.text(alphabet="=&%;+ aCcASsil0123456789fFxXé\x00\n", max_size=300)
                    ).encode()
    items = draw(twilio_items(route))
    if kind == "percent":  # invalid percent-encoding spliced into a real body
        text = urlencode(items)
        at = draw(st.integers(0, len(text)))
        return (text[:at] + draw(st.sampled_from(RAW_JUNK)) + text[at:]).encode()
    if kind == "latin1":  # percent-encoded Latin-1: valid ASCII, invalid once decoded
        items.append(("From", draw(st.sampled_from(["café", "Zürich", "ñ", "ÿ"]))))
        return urlencode(items, encoding="latin-1", errors="replace").encode()
    if kind == "latin1_raw":  # raw 8-bit bytes
        return urlencode(items).encode() + b"&From=caf\xe9"
    if kind == "utf16":
        return urlencode(items).encode("utf-16")
    return urlencode(items).replace("&", ";").encode()


@st.composite
def twilio_requests(draw: st.DrawFn, route: str) -> Req:
    """One request to a Twilio webhook route."""
    path = TWILIO_PATHS[route]
    url = PUBLIC_URL + path
    kind = draw(st.sampled_from(["form"] * 6 + ["raw"] * 2 + ["signature"] * 2
                                + ["ctype", "size", "json", "json", "encoding"]))

    if kind == "form":
        return _signed_form_req(route, draw(twilio_items(route)), "signed form")

    if kind == "raw":  # garbage; signed properly whenever it parses as a form
        body = draw(twilio_raw_body(route))
        items = strict_form(body)
        headers = {"Content-Type": FORM}
        if items is None:
            headers["X-Twilio-Signature"] = base64.b64encode(hashlib.sha1(body).digest()).decode()
            allowed = {400, 403}
        else:
            headers["X-Twilio-Signature"] = twilio_signature(url, items)
            allowed = form_allowed(route, items)
        if len(body) > MAX_BODY:
            allowed = {413}
        views = readings(items) if items is not None else []
        return Req(path, body, headers, frozenset(allowed), "raw body",
                   twiml_sids=twiml_sids(route, views))

    if kind == "signature":
        items = draw(twilio_items(route))
        body, headers = twilio_form(url, items)
        how = draw(st.sampled_from(["missing", "empty", "garbage", "non_ascii", "wrong_token",
                                    "other_route", "http", "tampered", "query_unsigned",
                                    "with_port", "signed_query", "signed_query"]))
        query = ""
        valid = False
        if how == "missing":
            del headers["X-Twilio-Signature"]
        elif how == "empty":
            headers["X-Twilio-Signature"] = ""
        elif how == "garbage":
            headers["X-Twilio-Signature"] = draw(st.one_of(
                st.binary(min_size=20, max_size=20).map(lambda b: base64.b64encode(b).decode()),
                st.text(alphabet="ABCDEFabcdef0123456789+/=", max_size=60)))
        elif how == "non_ascii":
            headers["X-Twilio-Signature"] = draw(st.sampled_from(["é", "Ω" * 28, "２８", "ß="]))
        elif how == "wrong_token":
            headers["X-Twilio-Signature"] = twilio_signature(url, items, token="not-the-token")
        elif how == "other_route":
            other = draw(st.sampled_from([p for r, p in TWILIO_PATHS.items() if r != route]))
            headers["X-Twilio-Signature"] = twilio_signature(PUBLIC_URL + other, items)
        elif how == "http":
            headers["X-Twilio-Signature"] = twilio_signature(
                url.replace("https://", "http://"), items)
        elif how == "tampered":  # a field changed after signing
            value = draw(WEIRD_VALUE)
            name = draw(st.sampled_from([*ROUTE_FIELDS[route], "From"]))
            if value in [v for k, v in items if k == name]:
                value += "x"
            body = (urlencode([*items, (name, value)])).encode()
        elif how == "query_unsigned":
            query = "attempt=2"
        elif how == "with_port":  # Twilio may sign the URL with the default port
            headers["X-Twilio-Signature"] = twilio_signature(
                url.replace(".com/", ".com:443/"), items)
            valid = True
        else:  # a query string the carrier was given is part of what it signs
            query = draw(st.sampled_from(["tenant=acme", "a=1&b=%20x", "x=%C3%A9", "flag"]))
            headers["X-Twilio-Signature"] = twilio_signature(f"{url}?{query}", items)
            valid = True
        if len(body) > MAX_BODY:
            allowed = {413}
        elif valid:
            allowed = form_allowed(route, items)
        elif how in ("missing", "empty"):
            allowed = {403}
        else:
            allowed = {403} | ({400} if len(items) > 100 else set())
        return Req(path, body, headers, frozenset(allowed), f"signature: {how}", query=query,
                   twiml_sids=twiml_sids(route, readings(items)) if valid else ())

    if kind == "ctype":
        items = draw(twilio_items(route))
        body, headers = twilio_form(url, items)
        ctype = draw(st.sampled_from([
            FORM + "; charset=utf-8", FORM + ";charset=UTF-8", "Application/X-WWW-Form-Urlencoded",
            None, "", "text/plain", "application/xml", "text/xml",
            "multipart/form-data; boundary=xyz", "application/octet-stream", JSON,
            "application/x-www-form-urlencoded-x", "*/*"]))
        if ctype is None:
            del headers["Content-Type"]
        else:
            headers["Content-Type"] = ctype
        if len(body) > MAX_BODY:
            allowed = {413}
        elif ctype is not None and ctype.split(";")[0].strip().lower() == FORM:
            allowed = form_allowed(route, items)
        elif ctype == JSON:  # not JSON, and no bodySHA256 to verify
            allowed = {400, 403, 415}
        else:
            allowed = {400, 415}
        return Req(path, body, headers, frozenset(allowed), f"content type {ctype!r}",
                   twiml_sids=twiml_sids(route, readings(items)))

    if kind == "encoding":  # Content-Encoding: real, bogus, and a decompression bomb
        items = draw(twilio_items(route))
        plain, headers = twilio_form(url, items)
        how = draw(st.sampled_from(["gzip", "deflate", "bogus_gzip", "bogus_deflate",
                                    "bomb", "identity"]))
        if how == "gzip":
            body, enc = gzip.compress(plain), "gzip"
        elif how == "deflate":
            body, enc = zlib.compress(plain), "deflate"
        elif how == "bogus_gzip":
            body, enc = plain, "gzip"
        elif how == "bogus_deflate":
            body, enc = plain, "deflate"
        elif how == "bomb":
            body, enc = BOMB, "gzip"
        else:
            body, enc = plain, "identity"
        headers["Content-Encoding"] = enc
        if len(body) > MAX_BODY:
            allowed = {413}
        elif how == "bomb":
            allowed = {400, 403, 413}
        elif how in ("gzip", "deflate", "identity"):
            allowed = form_allowed(route, items) | ({400, 415} if how != "identity" else set())
            if len(plain) > MAX_BODY:
                allowed = {413} | ({400, 415} if how != "identity" else set())
        else:  # a body that does not decode as it says
            allowed = {400, 403, 415}
        return Req(path, body, headers, frozenset(allowed), f"content-encoding {how}",
                   twiml_sids=twiml_sids(route, readings(items)))

    if kind == "size":  # around and above server.max_body_bytes
        items = draw(twilio_items(route))
        target = MAX_BODY + draw(st.one_of(st.sampled_from([-1, 0, 1, 2]),
                                           st.integers(1, 200_000)))
        prefix = urlencode(items).encode() + b"&Padding="
        pad = max(0, target - len(prefix))
        items = [*items, ("Padding", "x" * pad)]
        body = prefix + b"x" * pad
        sign = draw(st.sampled_from(["good", "good", "missing", "garbage"]))
        headers = {"Content-Type": draw(st.sampled_from([FORM, "text/plain", JSON]))}
        if sign == "good":
            headers["X-Twilio-Signature"] = twilio_signature(url, items)
        elif sign == "garbage":
            headers["X-Twilio-Signature"] = "AAAA"
        if len(body) > MAX_BODY:
            allowed = {413}
        elif sign == "missing":
            allowed = {403}
        elif headers["Content-Type"] != FORM:
            allowed = {400, 403, 415}
        elif sign == "good":
            allowed = form_allowed(route, items)
        else:
            allowed = {403} | ({400} if len(items) > 100 else set())
        return Req(path, body, headers, frozenset(allowed), f"size {len(body)}",
                   chunked=draw(st.booleans()), expect100=draw(st.booleans()),
                   twiml_sids=twiml_sids(route, readings(items)))

    # JSON body: Twilio signs the URL, which carries bodySHA256 of the raw body.
    shape = draw(st.sampled_from(["fields", "fields", "fields", "value", "garbage", "deep"]))
    if shape == "fields":
        doc: dict[str, Any] = dict(draw(twilio_items(route)))
        for _ in range(draw(st.integers(0, 2))):
            key = draw(st.sampled_from([*ROUTE_FIELDS[route], "From", "To"]))
            doc[key] = draw(st.one_of(JSON_VALUE, st.sampled_from(JSON_WEIRD)))
        body = dump_json(doc, draw(st.booleans()))
    elif shape == "value":
        body = dump_json(draw(JSON_VALUE), draw(st.booleans()))
    elif shape == "garbage":
        body = draw(st.one_of(st.binary(max_size=200),
                              st.sampled_from([b"{", b"{}}", b"[1,]", b"\xef\xbb\xbf{}", b"1" * 5000,
                                               b'{"CallSid": 1' + b"0" * 5000 + b"}", b"NaN"])))
    else:
        depth = draw(st.sampled_from([2, 50, 500, 900, 990, 1000, 1100, 5000, 30_000]))
        body = draw(st.sampled_from([b"[" * depth + b"]" * depth,
                                     b'{"a":' * depth + b"1" + b"}" * depth]))
    digest = hashlib.sha256(body).hexdigest()
    sign = draw(st.sampled_from(["good"] * 6 + ["no_sha", "wrong_sha", "url_only"]))
    query = f"bodySHA256={digest}"
    signed_url = f"{url}?{query}"
    if sign == "no_sha":
        query, signed_url = "", url
    elif sign == "wrong_sha":
        query = f"bodySHA256={hashlib.sha256(body + b' ').hexdigest()}"
        signed_url = f"{url}?{query}"
    elif sign == "url_only":
        signed_url = url
    headers = {"Content-Type": JSON, "X-Twilio-Signature": twilio_signature(signed_url, [])}
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = MISSING
    views = [parsed] if isinstance(parsed, dict) else []
    if len(body) > MAX_BODY:
        allowed = {413}
    elif sign != "good":
        allowed = {403} | ({400} if not views else set())
    elif not views:
        allowed = {400}
    else:
        allowed = twilio_allowed(route, views)
        if has_lone_surrogate(parsed):
            allowed.add(400)
    return Req(path, body, headers, frozenset(allowed), f"json {shape} {sign}", query=query,
               twiml_sids=twiml_sids(route, views))


# --------------------------------------------------------------------------- Telnyx oracle


def telnyx_allowed(body: bytes) -> tuple[set[int], str | None]:
    """Acceptable answers to an authentic body, and the event id a 200 acknowledges."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return {400}, None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        return {400}, None
    event_type, event_id, payload = data.get("event_type"), data.get("id"), data.get("payload")
    if not isinstance(event_type, str) or not event_type:
        return {400}, None
    if not isinstance(event_id, str) or not event_id:
        return {400}, None
    if not isinstance(payload, dict):
        return {400}, None
    allowed = {200} if len(event_id) <= 200 else {200, 400}  # ids may be bounded
    if has_lone_surrogate(doc):
        allowed.add(400)
    ccid = payload.get("call_control_id")
    if ccid is not None and not (isinstance(ccid, str)
                                 and TELNYX_CALL_CONTROL_ID.fullmatch(ccid)):
        return {400}, None  # not a call_control_id (v3:… / v2:…): the daemon says so
    if not (isinstance(ccid, str) and ccid):
        if event_type.startswith("call.") and event_type != "call.recording.saved":
            return {400}, None  # a call event must name its call
        if event_type.startswith(("call.", "streaming.")):
            allowed.add(400)
    return allowed, event_id


EVENT_TYPES = [
    *["call.initiated"] * 6, "call.answered", "call.answered", *["call.hangup"] * 3,
    "call.machine.detection.ended", "call.machine.greeting.ended",
    "call.machine.premium.detection.ended", "call.machine.premium.greeting.ended",
    "call.recording.saved", "call.recording.error", "call.dtmf.received", "call.cost",
    "call.bridged", "call.speak.started", "call.speak.ended", "call.playback.ended",
    "call.gather.ended", "call.refer.completed", "streaming.started", "streaming.stopped",
    "streaming.failed", "call.", "call", "streaming.", "CALL.INITIATED", "message.received",
    "fax.received", " ", "call.initiated\x00", "call.hangup ", "\ud800", "é",
]
HANGUP_CAUSES = ["normal_clearing", "originator_cancel", "timeout", "no_answer", "user_busy",
                 "call_rejected", "not_found", "time_limit", "unspecified", "", "weird",
                 "NORMAL_CLEARING", "\ud800"]


@st.composite
def telnyx_payload(draw: st.DrawFn, event_type: str) -> dict[str, Any]:
    n = draw(st.integers(0, 2**64))
    ccid_kind = draw(st.sampled_from(["fresh"] * 4 + ["v3"] * 3
                                     + ["weird", "json", "missing", "huge"]))
    payload: dict[str, Any] = {
        "call_leg_id": f"leg-{n:x}", "call_session_id": f"session-{n:x}",
        "connection_id": "2811212257810187875", "from": "+1555" + f"{n % 10**7:07d}",
        "to": PHONE, "direction": draw(st.sampled_from(["incoming", "outgoing", "inbound", 7,
                                                        None, ""])),
        "state": "parked", "start_time": "2026-11-26T10:00:00.000000Z",
        "occurred_at": "2026-11-26T10:00:01.000000Z",
        "client_state": draw(st.sampled_from([None, "", "e30=", "not base64!", "bnVsbA==",
                                              base64.b64encode(b'{"call_id":"x"}').decode()])),
    }
    if ccid_kind == "fresh":  # a call not seen before (numbered when sent)
        payload["call_control_id"] = FRESH_CALL
    elif ccid_kind == "v3":  # one of a few calls that several events are about
        payload["call_control_id"] = f"v3:fuzz-call-{n % 40}"
    elif ccid_kind == "weird":
        payload["call_control_id"] = draw(st.one_of(st.sampled_from(JSON_WEIRD), TEXT))
    elif ccid_kind == "json":
        payload["call_control_id"] = draw(JSON_VALUE)
    elif ccid_kind == "huge":
        payload["call_control_id"] = draw(HUGE)
    if event_type == "call.hangup":
        payload["hangup_cause"] = draw(st.one_of(st.sampled_from(HANGUP_CAUSES), JSON_VALUE))
        payload["hangup_source"] = draw(st.sampled_from(["caller", "callee", "unknown", 3]))
    elif event_type.startswith("call.machine"):
        payload["result"] = draw(st.one_of(st.sampled_from(["human", "machine", "not_sure",
                                                            "ended", "beep_detected"]),
                                           JSON_VALUE))
    elif event_type == "call.dtmf.received":
        payload["digit"] = draw(st.sampled_from(["1", "#", "*", "", "12", None, 5]))
    elif event_type.startswith("call.recording"):
        payload["recording_urls"] = draw(st.one_of(
            st.just({"mp3": "https://example.com/r.mp3", "wav": "https://example.com/r.wav"}),
            JSON_VALUE))
        payload["channels"] = draw(st.sampled_from(["single", "dual", 2, None]))
    elif event_type == "call.cost":
        payload["total_cost"] = draw(st.sampled_from(["0.0123", 0.0123, -1, "NaN", None]))
        payload["billed_duration_secs"] = draw(st.sampled_from([60, "60", -5, 10**30]))
        payload["cost_parts"] = draw(st.one_of(st.just([{"cost": "0.01", "type": "call"}]),
                                               JSON_VALUE))
    elif event_type.startswith("streaming."):
        payload["stream_url"] = draw(st.sampled_from(["wss://voice.example.com/media/telnyx/x",
                                                      "", None, 42]))
        payload["failure_reason"] = draw(st.sampled_from(["connection_failed", None]))
    for key in draw(st.lists(st.sampled_from(sorted(payload)), max_size=3)):
        payload.pop(key, None)
    payload.update(draw(st.dictionaries(TEXT, JSON_VALUE, max_size=3)))
    return payload


# Placeholders numbered at send time, so that most events and calls are new to the daemon.
FRESH_ID, FRESH_CALL = "__FRESH_EVENT_ID__", "__FRESH_CALL_ID__"

ENVELOPE_PATHS: list[tuple[str, ...]] = [
    (), ("data",), ("data", "event_type"), ("data", "id"), ("data", "payload"),
    ("data", "payload", "call_control_id"), ("data", "record_type"), ("meta",),
    ("data", "occurred_at")]


@st.composite
def telnyx_envelope(draw: st.DrawFn) -> Any:
    """A Call Control webhook envelope, sometimes with wrong types or keys missing."""
    event_type = draw(st.one_of(st.sampled_from(EVENT_TYPES), st.sampled_from(EVENT_TYPES),
                                st.sampled_from(EVENT_TYPES), TEXT))
    event_id = draw(st.one_of(
        st.just(FRESH_ID), st.just(FRESH_ID), st.just(FRESH_ID),
        st.integers(0, 3000).map(lambda i: f"0ccc7b54-4df3-4bcb-a65a-{i:012d}"),
        st.sampled_from(["", " ", "\ud800", "a" * 201, "x" * 60_000]),
        TEXT))
    doc: Any = {
        "data": {"record_type": "event", "event_type": event_type, "id": event_id,
                 "occurred_at": "2026-11-26T10:00:00.000000Z",
                 "payload": draw(telnyx_payload(event_type))},
        "meta": {"attempt": 1, "delivered_to": f"{PUBLIC_URL}{TELNYX_PATH}"},
    }
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 1, 2]))):
        where = draw(st.sampled_from(ENVELOPE_PATHS))
        if not where:
            doc = draw(JSON_VALUE)
            break
        parent = doc
        for key in where[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        if draw(st.booleans()):
            parent.pop(where[-1], None)
        else:
            parent[where[-1]] = draw(st.one_of(JSON_VALUE, st.sampled_from(JSON_WEIRD)))
    return doc


@dataclass
class TelnyxSpec:
    """A Telnyx request before it is signed (signatures carry the current time)."""

    body: bytes
    note: str
    auth: str = "good"           # good | a way of being unauthentic
    age: int = 0                 # seconds before now the timestamp is
    bad_ts: str = ""             # for auth == "bad_ts": the timestamp text, or a recipe
    content_type: str | None = JSON
    chunked: bool = False
    replay: int | None = None    # resend an acknowledged body instead of ``body``
    encoding: str = ""           # Content-Encoding: gzip, deflate, bogus_gzip, bomb

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 300 else (
            self.body[:200] + b"...<%d bytes>..." % len(self.body) + self.body[-50:])
        return (f"TelnyxSpec({self.note!r}, body={body!r}, auth={self.auth!r}, age={self.age}, "
                f"bad_ts={self.bad_ts!r}, content_type={self.content_type!r}, "
                f"chunked={self.chunked}, replay={self.replay}, encoding={self.encoding!r})")


AUTH_VARIANTS = ["missing_sig", "missing_ts", "missing_both", "garbage", "not_base64",
                 "non_ascii", "other_key", "other_body", "other_ts", "truncated", "old",
                 "future", "bad_ts", "bad_ts", "multi"]
BAD_TIMESTAMPS = ["", " ", "abc", "-5", "1e9", "0x10", "{now}.5", "²", "¹⁷⁶⁴", "9" * 13, "0",
                  "{arabic_now}", "{fullwidth_now}", " {now}", "+{now}"]


@st.composite
def telnyx_specs(draw: st.DrawFn) -> TelnyxSpec:
    kind = draw(st.sampled_from(["envelope"] * 7 + ["json", "garbage", "deep", "size"]))
    if kind == "envelope":
        body = dump_json(draw(telnyx_envelope()), draw(st.sampled_from([True, True, False])))
    elif kind == "json":
        body = dump_json(draw(JSON_VALUE), True)
    elif kind == "garbage":
        valid = telnyx_event("call.answered", {"call_control_id": "v3:x"})
        body = draw(st.one_of(
            st.binary(max_size=300),
            st.integers(1, len(valid) - 1).map(lambda n: valid[:n]),
            st.sampled_from([b"", b"null", b"{}", b"[]", b'{"data": null}', b"\xef\xbb\xbf{}",
                             valid.decode().encode("utf-16"), b"\xff" + valid, valid + b"x",
                             valid.replace(b'"evt-1"', b"1" + b"0" * 5000),
                             valid.replace(b'"evt-1"', b"1" + b"0" * 100)])))
    elif kind == "deep":
        depth = draw(st.sampled_from([2, 50, 500, 900, 990, 1000, 1100, 5000, 30_000]))
        body = draw(st.sampled_from([
            b"[" * depth + b"]" * depth,
            b'{"data":' * depth + b"1" + b"}" * depth,
            b'{"data": {"event_type": "call.cost", "id": "deep", "payload": {"x": '
            + b"[" * depth + b"]" * depth + b"}}}"]))
    else:
        target = MAX_BODY + draw(st.one_of(st.sampled_from([-1, 0, 1, 2]),
                                           st.integers(1, 200_000)))
        base = telnyx_event("call.cost", {"call_control_id": "v3:big", "pad": ""},
                            event_id=f"evt-size-{target}")
        body = base.replace(b'"pad": ""', b'"pad": "' + b"x" * max(0, target - len(base)) + b'"')
    auth = draw(st.sampled_from(["good"] * 20 + AUTH_VARIANTS))
    spec = TelnyxSpec(body, kind, auth=auth)
    if auth == "good":
        spec.age = draw(st.sampled_from([0, 0, 0, 1, 60, 250, -60]))
    elif auth == "old":
        spec.age = draw(st.integers(310, 10**9))
    elif auth == "future":
        spec.age = -draw(st.integers(310, 10**9))
    elif auth == "bad_ts":
        spec.bad_ts = draw(st.sampled_from(BAD_TIMESTAMPS))
    spec.content_type = draw(st.sampled_from([JSON] * 8 + [
        JSON + "; charset=utf-8", None, "text/plain", FORM, "application/octet-stream"]))
    spec.chunked = draw(st.sampled_from([False] * 9 + [True]))
    if draw(st.sampled_from([False] * 9 + [True])):
        spec.replay = draw(st.integers(0, 10**6))
    spec.encoding = draw(st.sampled_from([""] * 16 + ["gzip", "deflate", "bogus_gzip", "bomb"]))
    return spec


def _digits(n: int, zero: str) -> str:
    return "".join(chr(ord(zero) + int(d)) for d in str(n))


def _ed25519(key: SigningKey, ts: str, body: bytes) -> str:
    return base64.b64encode(key.sign(ts.encode("utf-8") + b"|" + body).signature).decode()


def telnyx_request(daemon: Daemon, spec: TelnyxSpec) -> Req:
    """Sign ``spec`` now and work out the acceptable answers."""
    assert daemon.signer is not None
    key = daemon.signer.key
    body = spec.body
    if spec.replay is not None and daemon.accepted:
        body = daemon.accepted[spec.replay % len(daemon.accepted)]
    daemon.serial += 1
    body = body.replace(FRESH_ID.encode(), b"ev-%08d" % daemon.serial).replace(
        FRESH_CALL.encode(), b"v3:fresh-call-%08d" % daemon.serial)
    now = int(time.time())
    ts = str(now - spec.age)
    authentic = spec.auth == "good"
    headers: dict[str, str] = {}
    sig = _ed25519(key, ts, body)
    if spec.auth in ("old", "future"):
        sig = _ed25519(key, ts, body)
    elif spec.auth == "bad_ts":
        ts = spec.bad_ts.format(now=now, arabic_now=_digits(now, "٠"),
                                fullwidth_now=_digits(now, "０"))
        sig = _ed25519(key, ts, body)
        if spec.bad_ts in ("{arabic_now}", "{fullwidth_now}", " {now}"):
            authentic = None  # the current time, spelt oddly and signed: accept or refuse
    elif spec.auth == "garbage":
        sig = base64.b64encode(hashlib.sha512(body).digest()).decode()
    elif spec.auth == "not_base64":
        sig = "not base64 at all!"
    elif spec.auth == "non_ascii":
        sig = "é" * 88
    elif spec.auth == "other_key":
        sig = _ed25519(SigningKey(b"\x07" * 32), ts, body)
    elif spec.auth == "other_body":
        sig = _ed25519(key, ts, body + b" ")
    elif spec.auth == "other_ts":
        sig = _ed25519(key, str(now - 1), body)
    elif spec.auth == "truncated":
        sig = base64.b64encode(base64.b64decode(sig)[:63]).decode()
    elif spec.auth == "multi":  # several signatures, one right
        sig = f"{base64.b64encode(bytes(64)).decode()},{sig}"
        authentic = None
    if spec.auth not in ("missing_sig", "missing_both"):
        headers["telnyx-signature-ed25519"] = sig
    if spec.auth not in ("missing_ts", "missing_both"):
        headers["telnyx-timestamp"] = ts
    if spec.content_type is not None:
        headers["Content-Type"] = spec.content_type
    allowed, event_id = telnyx_allowed(body)
    if spec.content_type is None or spec.content_type.split(";")[0] != JSON:
        allowed |= {400, 415}
    if len(body) > MAX_BODY:
        allowed, event_id = {413}, None
    elif authentic is False:
        allowed, event_id = {403}, None
    elif authentic is None:
        allowed |= {403}
    wire = body  # the signature covers the body, whatever the transfer coding
    if spec.encoding == "gzip":
        wire = gzip.compress(body)
    elif spec.encoding == "deflate":
        wire = zlib.compress(body)
    elif spec.encoding == "bogus_gzip":  # says gzip, is not
        allowed, event_id = {400, 403, 415}, None
    elif spec.encoding == "bomb":
        wire, allowed, event_id = BOMB, {400, 403, 413}, None
    if spec.encoding:
        headers["Content-Encoding"] = spec.encoding.removeprefix("bogus_").replace(
            "bomb", "gzip")
        if spec.encoding in ("gzip", "deflate") and len(wire) <= MAX_BODY:
            allowed |= {400, 415}  # a server may refuse any content coding
        if len(wire) > MAX_BODY:  # (an undecodable body may be refused before its size)
            allowed = {413} | ({400} if spec.encoding in ("bogus_gzip", "bomb") else set())
            event_id = None
    return Req(TELNYX_PATH, wire, headers, frozenset(allowed),
               f"telnyx {spec.note} auth={spec.auth} ts={ts!r} encoding={spec.encoding!r}",
               chunked=spec.chunked, event_id=event_id)


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("route", list(TWILIO_PATHS))
def test_twilio_webhook_fuzz(route: str) -> None:
    with Daemon("twilio") as daemon:
        @FUZZ
        @given(req=twilio_requests(route))
        def one_request(req: Req) -> None:
            daemon.send(req)

        one_request()
        daemon.assert_clean_run(route)


def test_telnyx_webhook_fuzz() -> None:
    with Daemon("telnyx", TelnyxSigner()) as daemon:
        @FUZZ
        @given(spec=telnyx_specs())
        def one_request(spec: TelnyxSpec) -> None:
            daemon.send(telnyx_request(daemon, spec))

        one_request()
        daemon.assert_clean_run("voice")
        assert daemon.fake is not None and daemon.fake.applied, "no call was ever answered"


# Inputs the fuzzer found that made the daemon answer 500 (or fail after answering); kept as
# plain regression cases so each one is named on its own in a test report.


def _twilio_json(route: str, doc: Any) -> Req:
    body = doc if isinstance(doc, bytes) else dump_json(doc, True)
    path = TWILIO_PATHS[route]
    query = f"bodySHA256={hashlib.sha256(body).hexdigest()}"
    headers = {"Content-Type": JSON,
               "X-Twilio-Signature": twilio_signature(f"{PUBLIC_URL}{path}?{query}", [])}
    views = [doc] if isinstance(doc, dict) else []
    allowed = twilio_allowed(route, views) if views else {400}
    if has_lone_surrogate(doc):
        allowed.add(400)
    return Req(path, body, headers, frozenset(allowed), f"json {route}", query=query,
               twiml_sids=twiml_sids(route, views))


def _twilio_case(case: str) -> Req:
    sid = call_sid(77)
    if case == "status-sequence-superscript":
        return _signed_form_req("status", [("CallSid", sid), ("CallStatus", "ringing"),
                                           ("SequenceNumber", "²")], case)
    if case == "status-duration-superscript":
        return _signed_form_req("status", [("CallSid", sid), ("CallStatus", "completed"),
                                           ("CallDuration", "³")], case)
    if case == "recording-duration-superscript":
        return _signed_form_req("recording", [
            ("CallSid", sid), ("RecordingSid", "RE" + "0" * 32),
            ("RecordingStatus", "completed"), ("RecordingDuration", "¹")], case)
    if case == "amd-duration-superscript":
        return _signed_form_req("amd", [("CallSid", sid), ("AnsweredBy", "human"),
                                        ("MachineDetectionDuration", "⁴")], case)
    if case == "json-deeply-nested":
        return _twilio_json("voice", b"[" * 1000 + b"]" * 1000)
    if case == "json-lone-surrogate-in-from":
        return _twilio_json("voice", {"CallSid": sid, "From": "\ud800", "To": PHONE})
    if case == "unsigned-gzip-content-encoding-on-plain-body":  # no signature needed
        return Req(TWILIO_PATHS["voice"], f"CallSid={sid}".encode(),
                   {"Content-Type": FORM, "Content-Encoding": "gzip"},
                   frozenset({400, 403, 415}), case)
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "status-sequence-superscript", "status-duration-superscript",
    "recording-duration-superscript", "amd-duration-superscript", "json-deeply-nested",
    "json-lone-surrogate-in-from", "unsigned-gzip-content-encoding-on-plain-body"])
def test_twilio_regressions(case: str) -> None:
    with Daemon("twilio") as daemon:
        daemon.send(_twilio_case(case))
        daemon.assert_metrics_add_up()


@pytest.mark.parametrize("case", [
    "deeply-nested-body", "superscript-timestamp-unsigned", "arabic-indic-timestamp",
    "lone-surrogate-call-control-id", "unsigned-gzip-content-encoding-on-plain-body"])
def test_telnyx_regressions(case: str) -> None:
    with Daemon("telnyx", TelnyxSigner()) as daemon:
        if case == "deeply-nested-body":
            spec = TelnyxSpec(b"[" * 1000 + b"]" * 1000, case)
        elif case == "superscript-timestamp-unsigned":  # no valid signature needed
            body = telnyx_event("call.answered", {"call_control_id": "v3:x"})
            daemon.send(Req(TELNYX_PATH, body, {
                "telnyx-signature-ed25519": base64.b64encode(bytes(64)).decode(),
                "telnyx-timestamp": "²", "Content-Type": JSON}, frozenset({403}), case))
            daemon.assert_metrics_add_up()
            return
        elif case == "arabic-indic-timestamp":
            spec = TelnyxSpec(telnyx_event("call.answered", {"call_control_id": "v3:x"}),
                              case, auth="bad_ts", bad_ts="{arabic_now}")
        elif case == "unsigned-gzip-content-encoding-on-plain-body":
            spec = TelnyxSpec(telnyx_event("call.answered", {"call_control_id": "v3:x"}),
                              case, auth="missing_both", encoding="bogus_gzip")
        else:
            spec = TelnyxSpec(telnyx_event("call.initiated", {
                "call_control_id": "\ud800", "direction": "incoming", "from": "+15557654321",
                "to": PHONE}), case)
        daemon.send(telnyx_request(daemon, spec))
        daemon.assert_metrics_add_up()
        assert not daemon.sink.errors, "\n".join(daemon.sink.errors)
