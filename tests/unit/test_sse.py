"""The shared SSE parser and stream reader of the streaming LLM providers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from patterd.backends.errors import BackendError
from patterd.backends.llm.sse import (MAX_STREAM_BYTES, SSEEvent, SSEParser, SSEStream,
                                      SSETimeout, SSETooLong, dumps, error_detail,
                                      parse_arguments, post_stream, redact, retryable_status)

# every feature at once: comments, event names, multi-line data, ids, CRLF/CR/LF, a field
# without a colon, no space after the colon, two spaces, multi-byte UTF-8, an event-only block
STREAM = ("\ufeff: keep-alive comment\r\n"
          "event: message_start\r\ndata: {\"a\": 1}\r\n\r\n"
          "data: line one\ndata: line two\n\n"
          "id: 42\rdata:no-space\r\r"
          "data:  two spaces\n\n"
          "event: ping\n\n"
          "data\n\n"
          "event: content_block_delta\ndata: {\"text\": \"héllo 👋\"}\n\n"
          ": trailing comment\n"
          "data: [DONE]\n\n").encode()
EXPECTED = [
    SSEEvent("message_start", '{"a": 1}', ""),
    SSEEvent("message", "line one\nline two", ""),
    SSEEvent("message", "no-space", "42"),
    SSEEvent("message", " two spaces", "42"),
    SSEEvent("message", "", "42"),
    SSEEvent("content_block_delta", '{"text": "héllo 👋"}', "42"),
    SSEEvent("message", "[DONE]", "42"),
]


def parse_in_pieces(data: bytes, cuts: list[int]) -> list[SSEEvent]:
    parser = SSEParser()
    out: list[SSEEvent] = []
    last = 0
    for cut in [*cuts, len(data)]:
        out += parser.feed(data[last:cut])
        last = cut
    return out


def test_whole_stream() -> None:
    assert parse_in_pieces(STREAM, []) == EXPECTED


def test_every_single_split_point() -> None:
    # a cut anywhere — inside a field name, a UTF-8 character, a CRLF pair, the BOM — changes
    # nothing
    for cut in range(1, len(STREAM)):
        assert parse_in_pieces(STREAM, [cut]) == EXPECTED, cut


def test_byte_by_byte_and_pairs_of_cuts() -> None:
    assert parse_in_pieces(STREAM, list(range(1, len(STREAM)))) == EXPECTED
    for a in range(1, len(STREAM), 7):
        for b in range(a + 1, len(STREAM), 5):
            assert parse_in_pieces(STREAM, [a, b]) == EXPECTED, (a, b)


def test_unterminated_event_is_not_dispatched_and_empty_data_blocks_are_skipped() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: x\n\n: only a comment\n\n") == []
    assert parser.feed(b"data: incomplete") == []
    assert parser.feed(b"\n") == []                       # one line end: not yet an event
    assert parser.feed(b"\n") == [SSEEvent("message", "incomplete")]


def test_cr_then_lf_in_the_next_chunk_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []                        # the LF belongs to the CR
    assert parser.feed(b"\r\n") == [SSEEvent("message", "a")]


def test_helpers() -> None:
    assert error_detail({"error": {"message": "m", "type": "server_error"}}) == (
        "m", "server_error")
    assert error_detail({"type": "error", "error": {"type": "overloaded_error",
                                                    "message": "Overloaded"}}) == (
        "Overloaded", "overloaded_error")
    assert error_detail({"error": "plain"}) == ("plain", "")
    assert error_detail([1]) == ("", "")
    assert [retryable_status(s) for s in (400, 401, 403, 404, 422, 408, 429, 500, 503, 529)] == [
        False, False, False, False, False, True, True, True, True, True]
    assert redact("bad key sk-secret-123 here", "sk-secret-123") == "bad key *** here"
    assert len(redact("x" * 5000, "")) <= 501
    from types import MappingProxyType
    assert dumps({"a": MappingProxyType({"b": (1, 2)})}) == b'{"a":{"b":[1,2]}}'
    assert parse_arguments('{"target": "sales"}', "t", "p") == {"target": "sales"}
    assert parse_arguments("", "t", "p") == {} and parse_arguments("  ", "t", "p") == {}


def test_invalid_arguments_warn_without_content(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_arguments('{"digits": "12', "send_dtmf", "openai") == {}
    assert parse_arguments("[1, 2]", "send_dtmf", "openai") == {}
    assert "send_dtmf" in caplog.text and "12" not in caplog.text.replace("(14 characters)", "")


# --------------------------------------------------------------------------- over a socket

@asynccontextmanager
async def serve(handler) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_post("/s", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/s"))
    finally:
        await server.close()


async def open_stream(session: aiohttp.ClientSession, url: str, first: float,
                      idle: float, max_bytes: int = MAX_STREAM_BYTES
                      ) -> tuple[aiohttp.ClientResponse, SSEStream]:
    deadline = asyncio.get_running_loop().time() + first
    resp = await post_stream(session, url, body=b"{}", headers={}, deadline=deadline,
                             provider="test", secret="k")
    return resp, SSEStream(resp.content, deadline=deadline, token_timeout=idle,
                           first_timeout=first, max_bytes=max_bytes)


async def test_first_event_deadline_is_not_extended_by_comments() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(100):                       # keep-alives, but never an event
            await resp.write(b": still thinking\n\n")
            await asyncio.sleep(0.02)
        return resp

    async with serve(handler) as url, aiohttp.ClientSession() as session:
        resp, stream = await open_stream(session, url, first=0.2, idle=10)
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(SSETimeout) as err:
            await stream.read()
        assert err.value.first and loop.time() - began < 1.0
        resp.close()


async def test_idle_gap_after_first_event() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: one\n\n")
        await asyncio.sleep(0.15)                   # within the idle limit
        await resp.write(b"data: two\n\n")
        await asyncio.sleep(3)                      # beyond it
        return resp

    async with serve(handler) as url, aiohttp.ClientSession() as session:
        resp, stream = await open_stream(session, url, first=5, idle=0.5)
        assert await stream.read() == [SSEEvent("message", "one")]
        stream.progress()
        assert await stream.read() == [SSEEvent("message", "two")]
        stream.progress()
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(SSETimeout) as err:
            await stream.read()
        assert not err.value.first and 0.4 < loop.time() - began < 2.0
        assert "stalled" in str(err.value)
        resp.close()


async def test_events_that_are_no_token_do_not_extend_the_inter_token_timeout() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: token\n\n")
        for _ in range(200):                       # pings, every 20 ms, for 4 s
            await resp.write(b"event: ping\ndata: {}\n\n: keep-alive\n\n")
            await asyncio.sleep(0.02)
        return resp

    async with serve(handler) as url, aiohttp.ClientSession() as session:
        resp, stream = await open_stream(session, url, first=5, idle=0.5)
        assert (await stream.read())[0] == SSEEvent("message", "token")
        stream.progress()
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(SSETimeout) as err:
            while await stream.read():             # pings: the provider sees no progress
                pass
        assert not err.value.first and loop.time() - began < 1.5
        resp.close()


async def test_time_between_reads_is_not_the_servers_stall() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for word in (b"one", b"two", b"three"):
            await resp.write(b"data: " + word + b"\n\n")
            await asyncio.sleep(0.05)
        return resp

    async with serve(handler) as url, aiohttp.ClientSession() as session:
        resp, stream = await open_stream(session, url, first=5, idle=0.3)
        got = []
        while (batch := await stream.read()) is not None:
            got += [e.data for e in batch]
            stream.progress()
            await asyncio.sleep(0.5)                # speaking a sentence, longer than idle
        assert got == ["one", "two", "three"]
        resp.close()


async def test_an_endless_stream_stops_at_the_byte_limit() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"data: " + b"x" * 1000 + b"\n\n")
                await asyncio.sleep(0)
        except (ConnectionError, RuntimeError):
            return resp

    async with serve(handler) as url, aiohttp.ClientSession() as session:
        resp, stream = await open_stream(session, url, first=5, idle=5, max_bytes=100_000)
        read = 0
        with pytest.raises(SSETooLong):
            while batch := await stream.read():
                stream.progress()
                read += sum(len(e.data) for e in batch)
        assert 90_000 < read <= 100_000
        resp.close()


async def test_end_of_body_and_http_errors() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.query.get("fail"):
            return web.json_response({"error": {"message": "slow down", "type": "requests"}},
                                     status=429)
        if request.query.get("json"):
            return web.json_response({"ok": True})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: a\n\ndata: b\n\n")
        return resp

    async with serve(handler) as url, aiohttp.ClientSession() as session:
        resp, stream = await open_stream(session, url, first=5, idle=5)
        events = []
        while (batch := await stream.read()) is not None:
            events += batch
        assert [e.data for e in events] == ["a", "b"]
        resp.release()
        with pytest.raises(BackendError) as err:
            await open_stream(session, url + "?fail=1", 5, 5)
        assert err.value.status == 429 and err.value.retryable
        assert err.value.message == "requests: slow down"
        with pytest.raises(BackendError) as err:
            await open_stream(session, url + "?json=1", 5, 5)
        assert not err.value.retryable and "event stream" in err.value.message
