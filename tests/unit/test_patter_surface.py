"""The Patter API as its users know it (the Patter SDK's shapes, README: Python API): construction
without a public URL, webhook_url=, carrier attributes, TypeErrors that name what to use,
secrets out of every repr, phone.agent(...) building the same typed config as the YAML file,
and a clear error for each Patter argument that has no meaning here."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from patterd import Agent, ConfigError, Patter, Telnyx, Twilio
from patterd.config import load_config
from patterd.config.model import NO_RULES_FALLBACK
from tests.support.signing import TWILIO_SID, TelnyxSigner

PHONE = "+15550001234"
ENV = ("PATTERD_PUBLIC_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TELNYX_API_KEY",
       "TELNYX_CONNECTION_ID", "TELNYX_PUBLIC_KEY", "OPENAI_API_KEY", "PATTERD_ADMIN_TOKEN")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def twilio_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", TWILIO_SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "env-secret-token")


def carrier() -> Twilio:
    return Twilio(account_sid=TWILIO_SID, auth_token="arg-secret-token")


# -- construction and the public URL ---------------------------------------------------------

async def test_the_seed_example_constructs_and_serve_names_both_ways_to_the_url(
        twilio_env: None) -> None:
    phone = Patter(carrier=Twilio(), phone_number=PHONE)
    assert phone.config.server.public_url == ""
    with pytest.raises(ConfigError) as info:
        await phone.serve()
    (problem,) = info.value.problems
    assert problem.startswith("server.public_url: required")
    assert "webhook_url=" in problem and "PATTERD_PUBLIC_URL" in problem
    with pytest.raises(ConfigError):
        phone.build_app()


@pytest.mark.parametrize("given, url", [
    ("abc.ngrok.app", "https://abc.ngrok.app"),             # Patter's form: a host
    ("abc.ngrok.app/", "https://abc.ngrok.app"),
    ("https://voice.example.com", "https://voice.example.com"),
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),     # a local daemon
])
def test_webhook_url_gives_the_public_url(monkeypatch: pytest.MonkeyPatch, given: str,
                                          url: str) -> None:
    monkeypatch.setenv("PATTERD_PUBLIC_URL", "https://from-env.example.com")
    assert Patter(carrier=carrier(), phone_number=PHONE,
                  webhook_url=given).config.server.public_url == url
    # Positional, as in the Patter SDK's signature.
    assert Patter(carrier(), PHONE, given).config.server.public_url == url
    assert Patter(carrier=carrier(), phone_number=PHONE).config.server.public_url == \
        "https://from-env.example.com"


def test_a_bad_webhook_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        Patter(carrier=carrier(), phone_number=PHONE, webhook_url="https://x.example.com/?a=1")
    assert info.value.problems[0].startswith("server.public_url: expected a base URL")


# -- carriers ------------------------------------------------------------------------------

def test_carriers_expose_what_they_were_given_or_read(twilio_env: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    t = Twilio()
    assert (t.account_sid, t.auth_token) == (TWILIO_SID, "env-secret-token")
    assert t.configure_number is True and t.api_base_url == "https://api.twilio.com"
    t = Twilio(account_sid="AC...", auth_token="...")        # the seed's placeholders construct
    assert (t.account_sid, t.auth_token) == ("AC...", "...")
    key = TelnyxSigner().public_key_b64
    monkeypatch.setenv("TELNYX_API_KEY", "KEY-from-env")
    monkeypatch.setenv("TELNYX_CONNECTION_ID", "conn-env")
    monkeypatch.setenv("TELNYX_PUBLIC_KEY", key)
    x = Telnyx()
    assert (x.api_key, x.connection_id, x.public_key) == ("KEY-from-env", "conn-env", key)
    x = Telnyx(api_key="KEY...", connection_id="...", public_key="...")
    assert (x.api_key, x.connection_id, x.public_key) == ("KEY...", "...", "...")
    assert x.require_signature is True and x.api_base_url == "https://api.telnyx.com/v2"


def test_missing_credentials_name_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        Twilio()
    assert info.value.problems == ["carrier.account_sid: required (or set TWILIO_ACCOUNT_SID)",
                                   "carrier.auth_token: required (or set TWILIO_AUTH_TOKEN)"]
    with pytest.raises(ConfigError) as info:
        Telnyx(connection_id="c")
    assert "carrier.api_key: required (or set TELNYX_API_KEY)" in info.value.problems


async def test_malformed_credentials_are_named_at_serve() -> None:
    phone = Patter(carrier=Twilio(account_sid="AC...", auth_token="..."), phone_number=PHONE,
                   webhook_url="voice.example.com")
    with pytest.raises(ConfigError) as info:
        await phone.serve()
    assert info.value.problems == [
        "carrier.account_sid: expected AC followed by 32 hex digits, got 'AC...'… "
        "(5 characters)"]
    phone = Patter(carrier=Telnyx(api_key="KEY...", connection_id="...", public_key="..."),
                   phone_number=PHONE, webhook_url="voice.example.com")
    with pytest.raises(ConfigError) as info:
        await phone.serve()
    assert info.value.problems[0].startswith("carrier.public_key: ")


@pytest.mark.parametrize("wrong", ["twilio", None, {"provider": "twilio"}, 42])
def test_a_wrong_carrier_is_a_type_error_naming_twilio_and_telnyx(wrong: Any) -> None:
    with pytest.raises(TypeError) as info:
        Patter(carrier=wrong, phone_number=PHONE)
    assert "Twilio(...)" in str(info.value) and "Telnyx(...)" in str(info.value)


def test_equality_and_repr_never_show_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-secret-key")
    a, b = carrier(), carrier()
    assert a == b and hash(a) == hash(b) and a != Twilio(TWILIO_SID, "other-token")
    key = TelnyxSigner().public_key_b64
    telnyx = Telnyx(api_key="KEY-secret-telnyx", public_key=key)
    assert telnyx == Telnyx(api_key="KEY-secret-telnyx", public_key=key) and telnyx != a
    phone = Patter(carrier=a, phone_number=PHONE, webhook_url="voice.example.com",
                   admin={"token": "Qm7xK2pV9wR4tY8nL3cZ6bH1"},
                   llm={"provider": "openai", "tools": [
                       {"name": "lookup", "description": "d", "url": "https://t.example.com",
                        "secret": "tool-secret-value"}]},
                   stt={"provider": "pocketsphinx"})
    agent = phone.agent(llm={"provider": "webhook", "url": "https://a.example.com/turn",
                             "secret": "webhook-secret-value"})
    shown = " ".join(repr(x) for x in (a, telnyx, phone, phone.config, agent, a.settings))
    for secret in ("arg-secret-token", "KEY-secret-telnyx", "Qm7xK2pV9wR4tY8nL3cZ6bH1",
                   "sk-env-secret-key", "tool-secret-value", "webhook-secret-value"):
        assert secret not in shown
    assert TWILIO_SID[:6] in repr(a)


# -- the Patter-shaped agent API --------------------------------------------------------------

def test_phone_agent_builds_the_same_config_as_the_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "patter.yaml"
    path.write_text(textwrap.dedent(f"""\
        server: {{public_url: "https://voice.example.com"}}
        phone_number: "{PHONE}"
        carrier: {{account_sid: {TWILIO_SID}, auth_token: t, configure_number: false}}
        agent:
          system_prompt: "You are the front desk of {{company}}."
          first_message: "Hello from {{company}}!"
          language: en-GB
          variables: {{company: Acme}}
          voicemail_message: "Please call back."
        stt: {{provider: pocketsphinx}}
        tts: {{provider: espeak, voice: en-gb}}
        llm:
          provider: rules
          rules:
            - phrases: [hours]
              reply: "Nine to five."
          fallback: "Say hours."
        """))
    from_yaml = Agent.of(load_config(path, env={}))
    phone = Patter(carrier=Twilio(TWILIO_SID, "t", configure_number=False), phone_number=PHONE,
                   webhook_url="https://voice.example.com")
    agent = phone.agent(system_prompt="You are the front desk of {company}.",
                        first_message="Hello from {company}!", language="en-GB",
                        variables={"company": "Acme"}, voicemail_message="Please call back.",
                        stt="pocketsphinx", tts="espeak", voice="en-gb",
                        rules=[{"phrases": ["hours"], "reply": "Nine to five."}],
                        fallback="Say hours.")
    assert agent == from_yaml
    assert (agent.system_prompt, agent.first_message, agent.voice, agent.language) == (
        "You are the front desk of {company}.", "Hello from {company}!", "en-gb", "en-GB")


def test_phone_agent_maps_patter_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    phone = Patter(carrier=carrier(), phone_number=PHONE, webhook_url="voice.example.com")

    @dataclass(frozen=True)
    class Tool:          # the shape of getpatter's Tool
        name: str
        description: str = ""
        parameters: dict | None = None  # type: ignore[type-arg]
        handler: Any = None
        webhook_url: str = ""

    agent = phone.agent(system_prompt="Be brief.", voice="alloy", model="gpt-4o-mini",
                        llm="openai", tts={"provider": "openai"}, barge_in_threshold_ms=0,
                        tools=[Tool("weather", "The weather.", {"type": "object", "properties":
                                    {"city": {"type": "string"}}},
                                    webhook_url="https://tools.example.com/weather")])
    assert (agent.llm.provider, agent.llm.model, agent.llm.api_key) == (
        "openai", "gpt-4o-mini", "sk-env")
    assert (agent.tts.provider, agent.tts.voice) == ("openai", "alloy")
    assert agent.agent.barge_in is False
    (t,) = agent.llm.tools
    assert (t.name, t.url) == ("weather", "https://tools.example.com/weather")
    assert t.parameters["properties"] == {"city": {"type": "string"}}
    with pytest.raises(TypeError, match="in-process handler cannot run here"):
        phone.agent(system_prompt="x", llm="openai", tools=[Tool("f", handler=print)])


def test_phone_agent_problems_are_config_errors_with_key_paths() -> None:
    phone = Patter(carrier=carrier(), phone_number=PHONE)
    with pytest.raises(ConfigError) as info:
        phone.agent(language="English", tts={"provider": "espeak", "rate": "fast"})
    assert info.value.problems == [
        "agent.language: expected a language tag like en-US, got 'English'",
        "tts.rate: expected an integer, got 'fast'"]


@pytest.mark.parametrize("arg, words", [
    ({"engine": object()}, "no realtime engine: give stt=, llm= and tts="),
    ({"guardrails": [object()]}, "no output guardrails"),
    ({"hooks": object()}, "no pipeline hooks"),
    ({"barge_in_threshold_ms": 150}, "barge_in=True/False"),
    ({"agressive": True}, "unexpected keyword argument 'agressive'"),
    ({"first_mesage": "hi"}, "(did you mean 'first_message'?)"),
])
def test_phone_agent_says_what_has_no_meaning_here(arg: dict[str, Any], words: str) -> None:
    phone = Patter(carrier=carrier(), phone_number=PHONE)
    with pytest.raises(TypeError) as info:
        phone.agent(system_prompt="x", **arg)
    assert words in str(info.value)


def test_a_provider_object_is_a_type_error_showing_the_mapping() -> None:
    class DeepgramSTT:
        api_key = "dg"

    phone = Patter(carrier=carrier(), phone_number=PHONE)
    with pytest.raises(TypeError) as info:
        phone.agent(system_prompt="x", stt=DeepgramSTT())
    assert "stt= expected a provider name like 'deepgram'" in str(info.value)
    assert "DeepgramSTT" in str(info.value)


@pytest.mark.parametrize("arg, words", [
    ({"tunnel": True}, "patterd starts no tunnel"),
    ({"api_key": "pt_xxx"}, "no Patter Cloud here"),
    ({"twilio_sid": "AC1"}, "carrier=Twilio(account_sid=…, auth_token=…)"),
    ({"openai_key": "sk"}, "OPENAI_API_KEY"),
    ({"first_message": "Hi"}, "phone.agent(first_message=…)"),
    ({"agnet": {}}, "(did you mean 'agent'?)"),
])
def test_patter_says_what_has_no_meaning_here(arg: dict[str, Any], words: str) -> None:
    with pytest.raises(TypeError) as info:
        Patter(carrier=carrier(), phone_number=PHONE, **arg)
    assert words in str(info.value)


def test_harmless_patter_values_are_accepted() -> None:
    phone = Patter(carrier=carrier(), phone_number=PHONE, tunnel=None, mode="local")
    assert phone.config.phone_number == PHONE


@pytest.mark.parametrize("arg, words", [
    ({"on_message": lambda msg: "hi"}, "llm={'provider': 'webhook'"),
    ({"on_call_end": print}, "GET /v1/calls"),
    ({"dashboard": True}, "no dashboard here"),
    ({"tunnel": True}, "patterd starts no tunnel"),
])
async def test_serve_says_what_has_no_meaning_here(arg: dict[str, Any], words: str) -> None:
    phone = Patter(carrier=carrier(), phone_number=PHONE, webhook_url="voice.example.com")
    with pytest.raises(TypeError) as info:
        await phone.serve(phone.agent(system_prompt="x"), port=8000, **arg)
    assert words in str(info.value)


async def test_call_needs_a_running_serve_and_says_so() -> None:
    phone = Patter(carrier=carrier(), phone_number=PHONE, webhook_url="voice.example.com")
    with pytest.raises(RuntimeError, match=r"start it first .*asyncio.create_task"):
        await phone.call(to="+15557654321")
    with pytest.raises(TypeError, match="belongs to the agent"):
        await phone.call(to="+15557654321", first_message="Hi")
    with pytest.raises(TypeError, match="own phone_number"):
        await phone.call(to="+15557654321", from_number="+15559999999")
    with pytest.raises(NotImplementedError, match="patterd simulate"):
        await phone.test(phone.agent(system_prompt="x"))


def test_the_default_agent_can_say_goodbye_and_says_why_nothing_else(tmp_path: Path) -> None:
    """Not "sorry" to everything: the rules agent without rules (Python or YAML) hangs up on
    goodbye and its fallback says it has no rules yet."""
    from patterd.backends.llm.rules import RulesLLM
    phone = Patter(carrier=carrier(), phone_number=PHONE)
    agent = phone.agent(system_prompt="You are a pizza shop.")
    llm = RulesLLM(agent.llm, agent.agent)
    assert llm.match("ok goodbye").tool is not None and llm.match("bye").reply == "Goodbye!"
    assert llm.match("a large pizza").reply == NO_RULES_FALLBACK
    path = tmp_path / "p.yaml"
    path.write_text(f'server: {{public_url: "https://x.example.com"}}\nphone_number: "{PHONE}"\n'
                    f"carrier: {{account_sid: {TWILIO_SID}, auth_token: t}}\n"
                    "llm: {provider: rules}\n")
    assert load_config(path, env={}).llm == agent.llm
