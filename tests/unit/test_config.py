"""Config: typed values, env expansion and fallbacks, errors naming key paths."""

from __future__ import annotations

import dataclasses

import pytest

from patterd.config import ConfigError, build_config, parse_config
from tests.conftest import PHONE, telnyx_raw, twilio_raw
from tests.support.signing import TWILIO_SID, TelnyxSigner


def problems_of(raw: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(raw, env=env or {})
    return info.value.problems


def test_minimal_twilio_config_has_contract_defaults() -> None:
    raw = twilio_raw()
    del raw["store"]
    cfg = build_config(raw, env={})
    assert cfg.server.port == 8000 and cfg.server.host == "0.0.0.0"
    assert cfg.server.max_calls == 500 and cfg.server.drain_timeout == 600
    assert cfg.server.max_body_bytes == 65536
    assert cfg.carrier.provider == "twilio" and cfg.carrier.api_base_url == "https://api.twilio.com"
    assert cfg.agent.barge_in is True and cfg.agent.max_call_seconds == 3600
    assert (cfg.stt.provider, cfg.llm.provider, cfg.tts.provider, cfg.vad.provider) == (
        "pocketsphinx", "rules", "espeak", "silero")
    assert cfg.store.url == "sqlite:///./patterd.db"
    assert cfg.logging.format == "json"


def test_config_objects_are_frozen() -> None:
    cfg = build_config(twilio_raw(), env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.agent.transfer_targets["x"] = "+15551234567"  # type: ignore[index]


def test_env_expansion_with_and_without_default() -> None:
    raw = twilio_raw(server={"public_url": "${URL}", "port": "${PORT:-9001}"},
                     agent={"first_message": "Hi from ${NAME:-us}, cost $$5"})
    cfg = build_config(raw, env={"URL": "https://gw.example.org"})
    assert cfg.server.public_url == "https://gw.example.org"
    assert cfg.server.port == 9001
    assert cfg.agent.first_message == "Hi from us, cost $5"


def test_unset_env_var_is_reported_once_at_its_key() -> None:
    probs = problems_of(twilio_raw(server={"public_url": "${NOPE}"}))
    assert probs == ["server.public_url: environment variable NOPE is not set"]


def test_twilio_credentials_fall_back_to_environment() -> None:
    raw = twilio_raw(carrier={"provider": "twilio", "configure_number": False})
    raw["carrier"] = {"provider": "twilio", "configure_number": False}
    cfg = build_config(raw, env={"TWILIO_ACCOUNT_SID": TWILIO_SID, "TWILIO_AUTH_TOKEN": "tok"})
    assert cfg.carrier.account_sid == TWILIO_SID and cfg.carrier.auth_token == "tok"
    probs = problems_of(raw)
    assert "carrier.account_sid: required (or set TWILIO_ACCOUNT_SID)" in probs
    assert "carrier.auth_token: required (or set TWILIO_AUTH_TOKEN)" in probs


def test_telnyx_credentials_fall_back_to_environment() -> None:
    signer = TelnyxSigner()
    raw = {"server": {"public_url": "https://x.example.com"},
           "carrier": {"provider": "telnyx"}}
    cfg = build_config(raw, env={"TELNYX_API_KEY": "KEY1", "TELNYX_CONNECTION_ID": "c1",
                                 "TELNYX_PUBLIC_KEY": signer.public_key_b64})
    assert (cfg.carrier.api_key, cfg.carrier.connection_id) == ("KEY1", "c1")
    assert cfg.carrier.public_key == signer.public_key_b64
    probs = problems_of(raw)
    assert "carrier.api_key: required (or set TELNYX_API_KEY)" in probs
    assert any(p.startswith("carrier.public_key: required (or set TELNYX_PUBLIC_KEY)")
               for p in probs)


def test_telnyx_bad_public_key_is_named() -> None:
    probs = problems_of(telnyx_raw("bm90IGEga2V5"))
    assert probs == ["carrier.public_key: expected an Ed25519 public key of 32 bytes "
                     "(or 44-byte SPKI), got 9 bytes after base64 decoding"]


def test_unknown_keys_get_did_you_mean() -> None:
    probs = problems_of(twilio_raw(server={"publc_url": "x"}, agnt={}))
    assert "server.publc_url: unknown key (did you mean 'public_url'?)" in probs
    assert "agnt: unknown key (did you mean 'agent'?)" in probs


def test_keys_of_the_other_carrier_are_explained() -> None:
    probs = problems_of(twilio_raw(carrier={"api_key": "k"}))
    assert probs == ["carrier.api_key: a telnyx setting; this carrier is twilio"]


def test_every_problem_is_listed_with_its_path() -> None:
    raw = twilio_raw(server={"port": "eighty", "max_calls": 0, "public_url": "ftp://x"},
                     phone_number="5550001234",
                     agent={"barge_in": "sometimes", "transfer_targets": {"bad": "12"}},
                     logging={"format": "xml"})
    probs = problems_of(raw)
    assert "server.port: expected an integer, got 'eighty'" in probs
    assert "server.max_calls: expected at least 1, got 0" in probs
    assert "server.public_url: expected an http(s):// URL with a host, got 'ftp://x'" in probs
    assert ("phone_number: expected an E.164 number like +15550001234, got '5550001234'"
            in probs)
    assert "agent.barge_in: expected true or false, got 'sometimes'" in probs
    assert ("agent.transfer_targets.bad: expected an E.164 number or a sip: URI, got '12'"
            in probs)
    assert "logging.format: expected one of json, console, got 'xml'" in probs


def test_public_url_is_required() -> None:
    raw = twilio_raw()
    del raw["server"]["public_url"]
    assert problems_of(raw) == ["server.public_url: required (the https:// base URL the "
                                "carrier reaches, e.g. https://voice.example.com)"]


def test_rules_are_typed_and_checked() -> None:
    raw = twilio_raw(agent={"transfer_targets": {"billing": "+15550009999"}}, llm={
        "provider": "rules",
        "rules": [
            {"phrases": ["Pay  My Bill", "billing"], "dtmf": "1", "reply": "Sure.",
             "action": {"transfer": "billing"}},
            {"phrases": ["bye"], "reply": "Bye", "action": {"hangup": True}},
            {"dtmf": "9#", "reply": "Tones", "action": {"send_dtmf": "123#"}},
        ],
        "fallback": "Say billing."})
    cfg = build_config(raw, env={})
    r0, r1, r2 = cfg.llm.rules
    assert r0.phrases == ("pay my bill", "billing") and r0.dtmf == "1"
    assert (r0.action.kind, r0.action.value) == ("transfer", "billing")
    assert r1.action.kind == "hangup"
    assert (r2.action.kind, r2.action.value) == ("send_dtmf", "123#")
    assert cfg.llm.fallback == "Say billing."


def test_bad_rules_are_reported_per_rule() -> None:
    raw = twilio_raw(llm={"provider": "rules", "rules": [
        {"reply": "no trigger"},
        {"phrases": ["x"], "action": {"transfer": "nobody"}},
        {"phrases": ["y"], "dtmf": "x1", "action": {"hangup": True, "send_dtmf": "1"}},
        {"phrases": ["z"], "reply": "r", "colour": "blue"},
    ]})
    probs = problems_of(raw)
    assert "llm.rules[0]: a rule needs phrases or dtmf" in probs
    assert any(p.startswith("llm.rules[1].action.transfer: expected a name from "
                            "agent.transfer_targets") for p in probs)
    assert "llm.rules[2].dtmf: expected digits 0-9, *, #, A-D, got 'x1'" in probs
    assert ("llm.rules[2].action: expected exactly one of transfer, hangup, send_dtmf"
            in probs)
    assert "llm.rules[3].colour: unknown key" in probs


def test_cloud_provider_needs_a_key_from_config_or_env() -> None:
    raw = twilio_raw(llm={"provider": "openai", "model": "gpt-4o-mini"})
    assert problems_of(raw) == ["llm.api_key: required for openai (or set OPENAI_API_KEY, "
                                "or a base_url for a server that needs no key)"]
    cfg = build_config(raw, env={"OPENAI_API_KEY": "sk-test"})
    assert cfg.llm.api_key == "sk-test" and cfg.llm.base_url == "https://api.openai.com/v1"
    local = build_config(twilio_raw(llm={"provider": "openai",
                                         "base_url": "http://127.0.0.1:8080/v1"}), env={})
    assert local.llm.base_url == "http://127.0.0.1:8080/v1"


def test_provider_keys_are_checked_per_provider() -> None:
    probs = problems_of(twilio_raw(stt={"provider": "pocketsphinx", "model": "nova-2"},
                                   tts={"provider": "espek"}))
    assert ("stt.model: not a setting of stt provider 'pocketsphinx' (it belongs to "
            "'deepgram')") in probs
    assert any(p.startswith("tts.provider: expected one of espeak, elevenlabs")
               and "did you mean 'espeak'" in p for p in probs)


def test_pricing_overrides_merge_and_unknown_keys_fail() -> None:
    cfg = build_config(twilio_raw(pricing={"carrier": {"twilio": {
        "inbound_per_minute": 0.01}}}), env={})
    assert cfg.pricing["carrier"]["twilio"]["inbound_per_minute"] == 0.01
    assert cfg.pricing["carrier"]["telnyx"]["inbound_per_minute"] > 0
    probs = problems_of(twilio_raw(pricing={"carier": {}}))
    assert probs[0].startswith("pricing.carier: unknown key (did you mean 'carrier'?)")


def test_yaml_syntax_error_names_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("server:\n  port: [1,\n", env={}, source="x.yaml")
    assert info.value.problems[0].startswith("x.yaml: not valid YAML at line")


def test_not_a_mapping() -> None:
    assert problems_of(["a", "list"])[0] == "the file: expected a mapping, got a list"


def test_configure_number_needs_phone_number() -> None:
    raw = twilio_raw(carrier={"configure_number": True})
    del raw["phone_number"]
    assert problems_of(raw) == ["phone_number: required when carrier.configure_number is "
                                "true (an E.164 number like +15550001234)"]


def test_admin_token_falls_back_to_env_and_must_be_a_real_secret() -> None:
    token = "7d1e0b9a4c2f6e8d3b5a1c9f0e2d4b6a"            # openssl rand -hex 16
    cfg = build_config(twilio_raw(), env={"PATTERD_ADMIN_TOKEN": token})
    assert cfg.admin.token == token
    refused = {
        "replace-with-a-long-random-token": "placeholder (contains 'replace')",
        "REPLACE_ME_long_random_admin_token": "placeholder (contains 'replace')",
        "changeme": "placeholder (contains 'changeme')",
        "your-long-random-token-goes-here": "placeholder (contains 'random')",
        "short": "at least 24 characters",
        "x" * 40: "fewer than 10 different characters",
        "0123456789abcdef0123456789abcdef": "one short piece repeated",
        "abcdefghijklmnopqrstuvwxyz0123": "mostly a run",
        "   ": "blank",
        "7d1e0b9a4c2f 6e8d3b5a1c9f0e2d4b6a": "whitespace",
    }
    for value, why in refused.items():
        for raw, env in ((twilio_raw(admin={"token": value}), {}),
                         (twilio_raw(), {"PATTERD_ADMIN_TOKEN": value})):
            problems = problems_of(raw, env)
            assert len(problems) == 1 and problems[0].startswith("admin.token: "), problems
            assert why in problems[0] and "openssl rand -hex 32" in problems[0], problems
            # never echoed (beyond the placeholder word it is)
            assert value.strip() == "" or value not in problems[0] or value in why


def test_blank_or_whitespace_credentials_are_refused() -> None:
    assert problems_of(twilio_raw(carrier={"auth_token": " "})) == [
        "carrier.auth_token: is blank (only whitespace)"]
    raw = twilio_raw()
    del raw["carrier"]["auth_token"]
    assert problems_of(raw, env={"TWILIO_AUTH_TOKEN": " "}) == [
        "carrier.auth_token: is blank (only whitespace)"]
    assert problems_of(twilio_raw(carrier={"auth_token": "tok en"})) == [
        "carrier.auth_token: contains whitespace (a copy-paste accident?)"]
    signer = TelnyxSigner()
    assert problems_of(telnyx_raw(signer.public_key_b64, carrier={"api_key": "\t"})) == [
        "carrier.api_key: is blank (only whitespace)"]
    assert problems_of(twilio_raw(stt={"provider": "deepgram", "api_key": "  "})) == [
        "stt.api_key: is blank (only whitespace)"]
    assert problems_of(twilio_raw(stt={"provider": "deepgram"}), env={"DEEPGRAM_API_KEY": " "}
                       ) == ["stt.api_key: is blank (only whitespace)"]
    assert problems_of(twilio_raw(llm={"provider": "webhook", "url": "https://x.example/t",
                                       "secret": " "})) == [
        "llm.secret: is blank (only whitespace)"]


def test_phone_number_is_kept() -> None:
    assert build_config(twilio_raw(), env={}).phone_number == PHONE


def test_check_output_masks_credentials_in_every_url() -> None:
    """``patterd check`` prints URLs with their password and credential parameters hidden."""
    import yaml

    from patterd.config.render import render

    raw = twilio_raw(
        server={"public_url": "https://gw:pw-public@voice.example.com"},
        carrier={"api_base_url": "https://bob:pw-carrier@proxy.example.com/twilio"},
        store={"url": "postgresql://patterd:pw-store@db.internal/calls?sslmode=require"
                      "&password=pw-query"},
        stt={"provider": "deepgram", "api_key": "dg",
             "base_url": "wss://u:pw-stt@dg.example.com/v1?token=pw-token"},
        llm={"provider": "openai", "api_key": "sk",
             "base_url": "https://bob:hunter2@llm.example.com/v1?api_key=pw-key&model=m",
             "tools": [{"name": "order", "description": "Look up an order.",
                        "url": "https://t:pw-tool@tools.example.com/o?sig=pw-sig#x"}]},
        tts={"provider": "openai", "api_key": "sk",
             "base_url": "https://tts.example.com/v1?X-Amz-Signature=pw-amz"})
    text = render(build_config(raw, env={}))
    shown = yaml.safe_load(text)
    assert "pw-" not in text and "hunter2" not in text
    assert shown["server"]["public_url"] == "https://gw:***@voice.example.com"
    assert shown["carrier"]["api_base_url"] == "https://bob:***@proxy.example.com/twilio"
    assert shown["store"]["url"] == ("postgresql://patterd:***@db.internal/calls"
                                     "?sslmode=require&password=***")
    assert shown["stt"]["base_url"] == "wss://u:***@dg.example.com/v1?token=***"
    assert shown["llm"]["base_url"] == "https://bob:***@llm.example.com/v1?api_key=***&model=m"
    assert shown["llm"]["tools"][0]["url"] == "https://t:***@tools.example.com/o?sig=***#x"
    assert shown["tts"]["base_url"] == "https://tts.example.com/v1?X-Amz-Signature=***"


def test_check_output_masks_the_webhook_agent_url() -> None:
    from patterd.config.render import to_plain

    raw = twilio_raw(llm={"provider": "webhook", "secret": "s3cret-value",
                          "url": "https://hooks.example.com/agent?access_token=pw-hook&v=2"})
    llm = to_plain(build_config(raw, env={}))["llm"]
    assert llm["url"] == "https://hooks.example.com/agent?access_token=***&v=2"
    assert llm["secret"] == "********"


def test_url_errors_do_not_show_the_password() -> None:
    problems = problems_of(twilio_raw(
        carrier={"api_base_url": "ftp://bob:hunter2@proxy.example.com"},
        llm={"provider": "openai", "api_key": "sk", "base_url": "htp://al:hunter3@x.example"}))
    text = "\n".join(problems)
    assert "carrier.api_base_url: expected an http(s):// URL" in text
    assert "llm.base_url: expected" in text
    assert "hunter2" not in text and "hunter3" not in text and "bob:***@" in text


def test_twilio_signing_keys_from_the_file_or_the_environment_and_masked() -> None:
    from patterd.config.render import to_plain

    keys = {"webhooks_sharedkey_01": "9f3c1a7e5b2d4c6e", "KSold": "1b3d5f7a9c2e4a6c"}
    cfg = build_config(twilio_raw(carrier={"signing_keys": keys}), env={})
    assert dict(cfg.carrier.signing_keys) == keys
    env_cfg = build_config(twilio_raw(), env={
        "TWILIO_SIGNING_KEYS": "webhooks_sharedkey_01=9f3c1a7e5b2d4c6e,KSold=1b3d5f7a9c2e4a6c"})
    assert dict(env_cfg.carrier.signing_keys) == keys
    shown = to_plain(cfg)["carrier"]["signing_keys"]
    assert shown == {"webhooks_sharedkey_01": "********", "KSold": "********"}
    assert problems_of(twilio_raw(carrier={"signing_keys": {"bad id!": "x" * 16}})) == [
        "carrier.signing_keys: 'bad id!' is not a signing key id (letters, digits, _ and -, "
        "as Twilio shows it)"]
    assert problems_of(twilio_raw(carrier={"signing_keys": {"KS1": " "}})) == [
        "carrier.signing_keys.KS1: the secret is blank (only whitespace)"]
    assert problems_of(twilio_raw(), env={"TWILIO_SIGNING_KEYS": "KS1"}) == [
        "carrier.signing_keys: TWILIO_SIGNING_KEYS entry 1: expected id=secret (pairs "
        "separated by commas)"]
    signer = TelnyxSigner()
    assert problems_of(telnyx_raw(signer.public_key_b64,
                                  carrier={"signing_keys": keys})) == [
        "carrier.signing_keys: a twilio setting; this carrier is telnyx"]
