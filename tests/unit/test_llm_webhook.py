"""The ``webhook`` agent: each turn is POSTed (signed) to the user's endpoint; its reply is spoken
and its actions become tool calls — against a real local endpoint that verifies signatures."""

from __future__ import annotations

import json
import time

import pytest
from aiohttp import web

from patterd.backends import create_llm
from patterd.backends.errors import BackendError
from patterd.backends.llm.base import (END_CALL, SEND_DTMF, TRANSFER_CALL, Message, TextChunk,
                                       ToolCall)
from patterd.backends.llm.signing import SIGNATURE_HEADER, verify
from patterd.backends.llm.webhook import MAX_RESPONSE_BYTES, WebhookLLM
from patterd.config import ConfigError, build_config
from patterd.config.model import BackendConfig
from tests.conftest import twilio_raw
from tests.support.fakes.user_endpoint import UserEndpoint

SECRET = "whsec-agent-0123456789"
CONTEXT = {"call_id": "CA" + "1" * 32, "from": "+15551230000", "to": "+15559870000",
           "direction": "inbound", "carrier": "twilio"}
HISTORY = [Message("system", "You are a secret system prompt."),
           Message("assistant", "Thanks for calling."),
           Message("user", "hi"),
           Message("assistant", "How can I help?")]


@pytest.fixture
async def endpoint():
    ep = UserEndpoint(SECRET)
    await ep.start()
    yield ep
    await ep.stop()


@pytest.fixture
async def make_llm():
    made: list[WebhookLLM] = []

    def make(url: str, secret: str = SECRET, timeout: float = 0.0) -> WebhookLLM:
        llm = create_llm(BackendConfig("webhook", timeout=timeout,
                                       options={"url": url, "secret": secret}))
        assert isinstance(llm, WebhookLLM) and llm.name == "webhook"
        made.append(llm)
        return llm
    yield make
    for llm in made:
        await llm.close()


async def events(llm: WebhookLLM, text: str | None = "I need billing", dtmf: str | None = None,
                 history=HISTORY, context=CONTEXT) -> list:
    return [e async for e in llm.respond(history, text, dtmf, context=context)]


async def test_request_shape_signed_and_without_system_messages(endpoint, make_llm) -> None:
    endpoint.handler = lambda req: {"reply": "Sure."}
    llm = make_llm(endpoint.base_url + "/agent")
    assert await events(llm, "I need billing", "1") == [TextChunk("Sure.")]
    [req] = endpoint.requests
    assert req.path == "/agent"
    assert req.json == {"call": CONTEXT, "text": "I need billing", "dtmf": "1",
                        "history": [{"role": "assistant", "content": "Thanks for calling."},
                                    {"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "How can I help?"}]}
    assert "secret system prompt" not in req.body.decode()
    assert req.headers["User-Agent"] == "patterd"
    assert verify(SECRET, req.body, req.headers[SIGNATURE_HEADER])


async def test_missing_text_dtmf_and_context_are_empty(endpoint, make_llm) -> None:
    endpoint.handler = lambda req: None
    llm = make_llm(endpoint.base_url + "/agent")
    await events(llm, None, None, history=[], context=None)
    assert endpoint.requests[0].json == {"call": {}, "text": "", "dtmf": "", "history": []}


async def test_reply_and_actions_become_tool_calls(endpoint, make_llm) -> None:
    def agent(req):
        assert req.json["text"] == "billing please"
        return {"reply": "Transferring you to billing.",
                "actions": [{"transfer": "billing"}, {"send_dtmf": "12#"}, {"hangup": True},
                            {"hangup": False}, {"teleport": "mars"}]}
    endpoint.handler = agent
    llm = make_llm(endpoint.base_url + "/agent")
    assert await events(llm, "billing please") == [
        TextChunk("Transferring you to billing."),
        ToolCall(TRANSFER_CALL, {"target": "billing"}),
        ToolCall(SEND_DTMF, {"digits": "12#"}),
        ToolCall(END_CALL, {}),
    ]


async def test_actions_without_reply(endpoint, make_llm) -> None:
    endpoint.handler = lambda req: {"actions": [{"hangup": True}]}
    llm = make_llm(endpoint.base_url + "/agent")
    assert await events(llm) == [ToolCall(END_CALL, {})]


async def test_text_plain_reply(endpoint, make_llm) -> None:
    endpoint.handler = lambda req: f"You said {req.json['text']}."
    llm = make_llm(endpoint.base_url + "/agent")
    assert await events(llm, "hello") == [TextChunk("You said hello.")]


async def test_204_says_nothing(endpoint, make_llm) -> None:
    endpoint.handler = lambda req: None
    llm = make_llm(endpoint.base_url + "/agent")
    assert await events(llm) == []
    assert len(endpoint.requests) == 1


@pytest.mark.parametrize("status,retryable", [(500, True), (503, True), (429, True),
                                              (400, False), (404, False)])
async def test_http_error_is_backend_error(endpoint, make_llm, status, retryable) -> None:
    endpoint.fail_times, endpoint.fail_status = 1, status
    llm = make_llm(endpoint.base_url + "/agent")
    with pytest.raises(BackendError) as info:
        await events(llm)
    err = info.value
    assert (err.layer, err.provider, err.status, err.retryable) == (
        "llm", "webhook", status, retryable)
    assert err.message == "temporarily unavailable"        # the endpoint's own message
    assert len(endpoint.requests) == 1                     # no retry here: failover's job


async def test_wrong_secret_rejected_by_endpoint(endpoint, make_llm) -> None:
    llm = make_llm(endpoint.base_url + "/agent", secret="wrong-secret")
    with pytest.raises(BackendError) as info:
        await events(llm)
    assert info.value.status == 401 and not info.value.retryable
    assert info.value.message == "invalid signature"
    assert "wrong-secret" not in str(info.value)
    assert len(endpoint.rejected) == 1 and not endpoint.requests


@pytest.mark.parametrize("body,ctype,why", [
    ("{not json", "application/json", "bad JSON"),
    ('["a list"]', "application/json", "JSON object"),
    ('{"reply": 42}', "application/json", "'reply' must be a string"),
    ('{"actions": {"hangup": true}}', "application/json", "'actions' must be a list"),
    ("\x00\x01", "application/octet-stream", "unexpected content type"),
    ("<html><body>502 Bad Gateway</body></html>", "text/html", "unexpected content type"),
])
async def test_bad_answer_is_backend_error(endpoint, make_llm, body, ctype, why) -> None:
    endpoint.handler = lambda req: web.Response(text=body, content_type=ctype)
    llm = make_llm(endpoint.base_url + "/agent")
    with pytest.raises(BackendError) as info:
        await events(llm)
    assert why in info.value.message and info.value.status == 200
    assert not info.value.retryable


async def test_timeout_is_retryable_backend_error(endpoint, make_llm) -> None:
    endpoint.stall = 30
    llm = make_llm(endpoint.base_url + "/agent", timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(BackendError) as info:
        await events(llm)
    assert time.monotonic() - t0 < 2.0
    assert info.value.retryable and info.value.status is None
    assert "0.3 s" in info.value.message


def test_default_timeout_is_10_s() -> None:
    assert WebhookLLM(BackendConfig("webhook", options={"url": "https://x.test/"})).timeout == 10


@pytest.mark.parametrize("mode", ["length", "chunked"])
async def test_oversized_answer_refused(endpoint, make_llm, mode) -> None:
    endpoint.oversize = mode
    llm = make_llm(endpoint.base_url + "/agent")
    with pytest.raises(BackendError) as info:
        await events(llm)
    assert f"larger than {MAX_RESPONSE_BYTES} bytes" in info.value.message


async def test_redirect_not_followed(endpoint, make_llm) -> None:
    endpoint.redirect_to = endpoint.base_url + "/elsewhere"
    llm = make_llm(endpoint.base_url + "/agent")
    with pytest.raises(BackendError) as info:
        await events(llm)
    assert info.value.status == 307 and not info.value.retryable
    assert [r.path for r in endpoint.requests] == ["/agent"]


async def test_connection_refused_is_retryable(make_llm) -> None:
    ep = UserEndpoint(SECRET)
    url = await ep.start() + "/agent"
    await ep.stop()                                        # nothing listens there any more
    llm = make_llm(url)
    with pytest.raises(BackendError) as info:
        await events(llm)
    assert info.value.retryable and "connection failed" in info.value.message


async def test_one_session_reused_and_close_idempotent(endpoint, make_llm) -> None:
    endpoint.handler = lambda req: {"reply": json.dumps(req.json["text"])}
    llm = make_llm(endpoint.base_url + "/agent")
    await events(llm, "one")
    session = llm._session
    assert await events(llm, "two") == [TextChunk('"two"')]
    assert llm._session is session
    await llm.close()
    await llm.close()
    assert session is not None and session.closed


def test_config_requires_url_and_secret() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(twilio_raw(llm={"provider": "webhook"}), env={})
    problems = info.value.problems
    assert any(p.startswith("llm.url: required") for p in problems)
    assert any(p.startswith("llm.secret: required") for p in problems)
    cfg = build_config(twilio_raw(llm={"provider": "webhook", "url": "https://agent.example.com/",
                                       "secret": "s3cret", "timeout": 4}), env={})
    assert cfg.llm.options == {"url": "https://agent.example.com/", "secret": "s3cret"}
    assert cfg.llm.timeout == 4
