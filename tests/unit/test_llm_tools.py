"""User tools: signed POSTs to the user's endpoint, bounded retries, timeouts, a response size
cap, no redirects and no private addresses unless allowed — against a real local endpoint."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from patterd.backends.llm.base import ToolCall
from patterd.backends.llm.signing import SIGNATURE_HEADER, sign, verify
from patterd.backends.llm.tools import (PrivateAddressError, PublicOnlyResolver, ToolRunner,
                                        is_public_address)
from patterd.config.model import ToolConfig
from tests.support.fakes.user_endpoint import UserEndpoint

SECRET = "whsec-test-0123456789"
CONTEXT = {"call_id": "CA" + "0" * 32, "from": "+15551230000", "to": "+15559870000",
           "direction": "inbound", "carrier": "twilio"}


def tool(url: str, **kw) -> ToolConfig:
    kw.setdefault("allow_private", True)      # the endpoint lives on 127.0.0.1
    return ToolConfig(name=kw.pop("name", "lookup_order"), description="Look up an order",
                      url=url, parameters={"type": "object", "properties": {
                          "order": {"type": "string"}}}, **kw)


@pytest.fixture
async def endpoint():
    ep = UserEndpoint(SECRET)
    await ep.start()
    yield ep
    await ep.stop()


@pytest.fixture
async def make_runner():
    runners: list[ToolRunner] = []

    def make(*tools: ToolConfig, **kw) -> ToolRunner:
        kw.setdefault("backoff", 0.01)
        r = ToolRunner(tuple(tools), **kw)
        runners.append(r)
        return r
    yield make
    for r in runners:
        await r.close()


def call(name: str = "lookup_order", **args) -> ToolCall:
    return ToolCall(name, args or {"order": "A-17"}, id="call_1")


# -- signing -----------------------------------------------------------------------------------

def test_signature_verifies_and_tampering_fails() -> None:
    body = b'{"name":"x"}'
    header = sign(SECRET, body, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert verify(SECRET, body, header, now=1_700_000_010)
    assert not verify(SECRET, body + b" ", header, now=1_700_000_010)          # tampered body
    assert not verify("other-secret", body, header, now=1_700_000_010)          # wrong secret
    assert not verify(SECRET, body, header, now=1_700_000_000 + 301)            # stale
    assert not verify(SECRET, body, header, now=1_700_000_000 - 301)            # from the future
    forged_t = header.replace("t=1700000000", "t=1700000300")                   # replay, new t
    assert not verify(SECRET, body, forged_t, now=1_700_000_300)
    for bad in ("", "garbage", "t=abc,v1=00", "v1=" + "0" * 64, "t=1700000000"):
        assert not verify(SECRET, body, bad, now=1_700_000_000)
    assert not verify("", body, header, now=1_700_000_000)
    assert verify(SECRET, body, sign(SECRET, body))                             # now, by default


def test_rotation_any_v1_matches() -> None:
    body = b"{}"
    header = sign(SECRET, body, timestamp=100)
    rotated = header.replace("v1=", "v1=" + "ab" * 32 + ",v1=")
    assert verify(SECRET, body, rotated, now=100)


# -- the request -------------------------------------------------------------------------------

async def test_post_shape_signature_and_result(endpoint: UserEndpoint, make_runner) -> None:
    endpoint.handler = lambda req: {"status": "shipped", "order": req.json["arguments"]["order"]}
    runner = make_runner(tool(endpoint.base_url + "/tools/order", secret=SECRET))
    assert runner.has("lookup_order") and not runner.has("transfer_call")
    assert [s.name for s in runner.specs()] == ["lookup_order"]
    assert runner.specs()[0].parameters["properties"] == {"order": {"type": "string"}}

    result = await runner.run(call(order="A-17"), CONTEXT)

    assert json.loads(result) == {"status": "shipped", "order": "A-17"}
    [req] = endpoint.requests
    assert req.path == "/tools/order" and req.method == "POST"
    assert req.json == {"name": "lookup_order", "arguments": {"order": "A-17"}, "call": CONTEXT}
    assert req.headers["User-Agent"] == "patterd"
    assert req.headers["Content-Type"] == "application/json"
    assert verify(SECRET, req.body, req.headers[SIGNATURE_HEADER])


async def test_plain_text_result_and_unsigned_tool(make_runner) -> None:
    ep = UserEndpoint(secret="", handler=lambda req: "Order A-17 ships tomorrow.")
    await ep.start()
    try:
        runner = make_runner(tool(ep.base_url + "/t"))
        assert await runner.run(call(), CONTEXT) == "Order A-17 ships tomorrow."
        assert SIGNATURE_HEADER not in ep.requests[0].headers
    finally:
        await ep.stop()


async def test_wrong_secret_is_refused_by_the_endpoint(endpoint, make_runner) -> None:
    runner = make_runner(tool(endpoint.base_url + "/t", secret="not-the-secret", retries=3))
    result = json.loads(await runner.run(call(), CONTEXT))
    assert result == {"error": "HTTP 401: {\"error\": \"invalid signature\"}"}
    assert len(endpoint.rejected) == 1 and not endpoint.requests      # 4xx: no retry


async def test_unknown_tool_is_an_error_result(make_runner) -> None:
    runner = make_runner()
    assert "unknown tool" in json.loads(await runner.run(call("nope"), CONTEXT))["error"]


# -- retries and timeouts ----------------------------------------------------------------------

async def test_retries_on_503_then_succeeds(endpoint, make_runner) -> None:
    endpoint.fail_times = 2
    runner = make_runner(tool(endpoint.base_url + "/t", secret=SECRET, retries=2))
    result = json.loads(await runner.run(call(), CONTEXT))
    assert result["ok"] is True
    assert len(endpoint.requests) == 3


@pytest.mark.parametrize("status", [503, 429])
async def test_retries_exactly_retries_extra_times(endpoint, make_runner, status) -> None:
    endpoint.fail_times, endpoint.fail_status = 10, status
    runner = make_runner(tool(endpoint.base_url + "/t", secret=SECRET, retries=2))
    result = json.loads(await runner.run(call(), CONTEXT))
    assert result["error"].startswith(f"HTTP {status}")
    assert len(endpoint.requests) == 3
    # every attempt is signed afresh and verified by the endpoint
    assert all(verify(SECRET, r.body, r.headers[SIGNATURE_HEADER]) for r in endpoint.requests)


async def test_no_retry_on_400(endpoint, make_runner) -> None:
    endpoint.fail_times, endpoint.fail_status = 10, 400
    runner = make_runner(tool(endpoint.base_url + "/t", secret=SECRET, retries=3))
    result = json.loads(await runner.run(call(), CONTEXT))
    assert result["error"].startswith("HTTP 400")
    assert len(endpoint.requests) == 1


async def test_default_backoff_between_attempts(endpoint, make_runner) -> None:
    endpoint.fail_times = 10
    runner = make_runner(tool(endpoint.base_url + "/t", secret=SECRET, retries=2), backoff=0.2)
    t0 = time.monotonic()
    await runner.run(call(), CONTEXT)
    assert len(endpoint.requests) == 3
    assert time.monotonic() - t0 >= 0.2 + 0.4


async def test_timeout_per_attempt(endpoint, make_runner) -> None:
    endpoint.stall = 30
    runner = make_runner(tool(endpoint.base_url + "/t", secret=SECRET, timeout=0.3, retries=1))
    t0 = time.monotonic()
    result = json.loads(await runner.run(call(), CONTEXT))
    elapsed = time.monotonic() - t0
    assert result == {"error": "timed out after 0.3 s"}
    assert len(endpoint.requests) == 2                 # the timeout is retried once
    assert 0.6 <= elapsed < 3.0                        # two 0.3 s attempts, not one long one


async def test_connection_refused_is_retried_and_reported(make_runner) -> None:
    with socket.socket() as s:                         # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = make_runner(tool(f"http://127.0.0.1:{port}/t", retries=1))
    result = json.loads(await runner.run(call(), CONTEXT))
    assert result["error"].startswith("connection failed")


# -- response size cap -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["length", "chunked"])
async def test_oversized_response_refused_without_reading_it(endpoint, make_runner, mode) -> None:
    endpoint.oversize = mode
    runner = make_runner(tool(endpoint.base_url + "/t", secret=SECRET, max_response_bytes=1000,
                              retries=2))
    result = json.loads(await runner.run(call(), CONTEXT))
    assert result == {"error": "response larger than 1000 bytes"}
    assert len(endpoint.requests) == 1                 # not retried
    await asyncio.wait_for(endpoint.stream_done.wait(), 10)
    # the client hung up: the endpoint could not push the 32 MiB through
    assert endpoint.oversize_sent < endpoint.oversize_bytes // 2


async def test_declared_oversize_refused_before_the_body_arrives(endpoint, make_runner) -> None:
    """A Content-Length over the cap is refused on the headers alone, not after waiting for
    (and reading) the body."""
    endpoint.oversize, endpoint.body_delay = "length", 30
    runner = make_runner(tool(endpoint.base_url + "/t", secret=SECRET, max_response_bytes=1000,
                              timeout=2.0))
    result = json.loads(await runner.run(call(), CONTEXT))
    assert result == {"error": "response larger than 1000 bytes"}
    assert endpoint.oversize_sent == 0


async def test_response_exactly_at_the_cap_is_accepted(endpoint, make_runner) -> None:
    payload = {"data": "x" * 100}
    size = len(json.dumps(payload))
    endpoint.handler = lambda req: payload
    runner = make_runner(tool(endpoint.base_url + "/t", secret=SECRET, max_response_bytes=size))
    assert json.loads(await runner.run(call(), CONTEXT)) == payload
    runner2 = make_runner(tool(endpoint.base_url + "/t", secret=SECRET,
                               max_response_bytes=size - 1))
    assert "larger than" in json.loads(await runner2.run(call(), CONTEXT))["error"]


# -- redirects ---------------------------------------------------------------------------------

async def test_redirect_not_followed(endpoint, make_runner) -> None:
    endpoint.redirect_to = endpoint.base_url + "/internal/admin"
    runner = make_runner(tool(endpoint.base_url + "/t", secret=SECRET, retries=2))
    result = json.loads(await runner.run(call(), CONTEXT))
    assert result == {"error": "HTTP 307: redirect not followed"}
    assert [r.path for r in endpoint.requests] == ["/t"]
    assert not endpoint.rejected


# -- private addresses -------------------------------------------------------------------------

@pytest.mark.parametrize("address,public", [
    ("8.8.8.8", True), ("1.1.1.1", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("127.8.9.10", False), ("10.1.2.3", False), ("172.16.0.1", False),
    ("172.31.255.255", False), ("192.168.1.1", False), ("169.254.169.254", False),
    ("100.64.0.1", False), ("100.127.255.254", False), ("0.0.0.0", False),
    ("224.0.0.251", False), ("239.1.1.1", False), ("240.0.0.1", False),
    ("255.255.255.255", False), ("::1", False), ("::", False), ("fc00::1", False),
    ("fd12:3456::1", False), ("fe80::1", False), ("ff02::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("::ffff:8.8.8.8", True),
    ("2002:7f00:1::1", False), ("64:ff9b::a00:1", False), ("64:ff9b::808:808", True),
    ("fec0::1", False),
])
def test_address_classification(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


class StaticResolver(AbstractResolver):
    """DNS as the test says: hostname → addresses."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table, self.asked = table, []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"no such host {host}")
        return [{"hostname": host, "host": a, "port": port,
                 "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                 "proto": 0, "flags": 0} for a in self.table[host]]

    async def close(self) -> None:
        pass


async def test_resolver_keeps_public_addresses_only() -> None:
    inner = StaticResolver({"mixed.test": ["127.0.0.1", "93.184.215.14", "::1"],
                            "inside.test": ["10.0.0.5", "fe80::1%eth0", "::ffff:192.168.0.1"]})
    guarded = PublicOnlyResolver(inner)
    assert [r["host"] for r in await guarded.resolve("mixed.test", 443)] == ["93.184.215.14"]
    with pytest.raises(PrivateAddressError, match="private"):
        await guarded.resolve("inside.test", 443)


async def test_literal_loopback_refused_unless_allowed(endpoint, make_runner) -> None:
    url = endpoint.base_url + "/t"
    refused = make_runner(tool(url, secret=SECRET, allow_private=False, retries=2))
    result = json.loads(await refused.run(call(), CONTEXT))
    assert "private" in result["error"] and "allow_private" in result["error"]
    assert not endpoint.requests
    allowed = make_runner(tool(url, secret=SECRET, allow_private=True))
    assert json.loads(await allowed.run(call(), CONTEXT))["ok"] is True


@pytest.mark.parametrize("host", ["[::ffff:127.0.0.1]", "127.1", "[::1]"])
async def test_other_literal_forms_refused(make_runner, host) -> None:
    runner = make_runner(tool(f"http://{host}:9/t", allow_private=False))
    error = json.loads(await runner.run(call(), CONTEXT))["error"]
    assert error.startswith("refused:")


async def test_localhost_refused_via_resolver(endpoint, make_runner) -> None:
    url = f"http://localhost:{endpoint.port}/t"
    refused = make_runner(tool(url, secret=SECRET, allow_private=False))
    error = json.loads(await refused.run(call(), CONTEXT))["error"]
    assert "localhost resolves to a private or reserved address" in error
    assert not endpoint.requests
    allowed = make_runner(tool(url, secret=SECRET, allow_private=True))
    assert json.loads(await allowed.run(call(), CONTEXT))["ok"] is True


async def test_hostname_pointing_inside_refused_after_resolution(endpoint, make_runner) -> None:
    """A public-looking name whose DNS answer is 127.0.0.1 (what DNS rebinding does) is refused
    by the resolver the connection uses; the same name with allow_private reaches the host."""
    dns = StaticResolver({"tools.example.test": ["127.0.0.1"]})
    url = f"http://tools.example.test:{endpoint.port}/t"
    runner = make_runner(tool(url, secret=SECRET, allow_private=False, name="guarded"),
                         tool(url, secret=SECRET, allow_private=True, name="open"),
                         resolver=dns)
    error = json.loads(await runner.run(call("guarded"), CONTEXT))["error"]
    assert "tools.example.test resolves to a private or reserved address (127.0.0.1)" in error
    assert not endpoint.requests and dns.asked == ["tools.example.test"]
    assert json.loads(await runner.run(call("open"), CONTEXT))["name"] == "open"
    assert len(endpoint.requests) == 1


async def test_close_is_idempotent(endpoint, make_runner) -> None:
    runner = make_runner(tool(endpoint.base_url + "/t", secret=SECRET))
    await runner.run(call(), CONTEXT)
    sessions = list(runner._sessions.values())
    assert sessions and not any(s.closed for s in sessions)
    await runner.close()
    await runner.close()                     # a second close is harmless
    assert all(s.closed for s in sessions) and runner._sessions == {}
