"""Contract §3: the Python API."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import patterd
from patterd import ConfigError, Patter, Telnyx, Twilio
from patterd.carriers import telnyx, twilio
from tests.conftest import twilio_raw
from tests.support.signing import TWILIO_SID, TelnyxSigner


def test_names_are_the_carrier_classes() -> None:
    assert Twilio is twilio.Carrier and Telnyx is telnyx.Carrier
    assert patterd.__version__ == "0.1.0"


def test_twilio_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", TWILIO_SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "env-token")
    carrier = Twilio()
    assert carrier.settings.account_sid == TWILIO_SID
    assert carrier.settings.auth_token == "env-token"
    explicit = Twilio(account_sid="AC" + "2" * 32, auth_token="arg")
    assert explicit.settings.auth_token == "arg"
    assert "env-token" not in repr(carrier)


def test_missing_credentials_raise_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TELNYX_API_KEY",
                "TELNYX_PUBLIC_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError) as info:
        Twilio()
    assert "carrier.auth_token: required (or set TWILIO_AUTH_TOKEN)" in info.value.problems
    with pytest.raises(ConfigError):
        Telnyx()


def test_telnyx_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    key = TelnyxSigner().public_key_b64
    monkeypatch.setenv("TELNYX_API_KEY", "KEYX")
    monkeypatch.setenv("TELNYX_CONNECTION_ID", "conn")
    monkeypatch.setenv("TELNYX_PUBLIC_KEY", key)
    c = Telnyx()
    assert (c.settings.api_key, c.settings.connection_id, c.settings.public_key) == (
        "KEYX", "conn", key)
    c2 = telnyx.Carrier(api_key="KEY...", connection_id="x", public_key=key)
    assert c2.settings.api_key == "KEY..."


def test_patter_from_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATTERD_PUBLIC_URL", "https://gw.example.com")
    phone = Patter(carrier=Twilio(account_sid=TWILIO_SID, auth_token="t"),
                   phone_number="+15550001234")
    assert phone.config.server.public_url == "https://gw.example.com"
    assert phone.config.carrier.auth_token == "t"
    assert phone.config.phone_number == "+15550001234"
    assert phone.build_app() is not None


def test_patter_from_config(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(twilio_raw()))
    phone = Patter.from_config(path)
    assert isinstance(phone.carrier, Twilio)
    assert phone.config.server.public_url == "https://voice.example.com"


def test_patter_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """§3: arguments default to "" and fall back to the §2 variables; ${VAR} is expanded."""
    monkeypatch.setenv("PATTERD_PUBLIC_URL", "https://gw.example.com")
    monkeypatch.setenv("PATTERD_ADMIN_TOKEN", "admin-token-from-env-0123")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("GREETING", "Hello from the environment.")
    monkeypatch.delenv("VOICEMAIL", raising=False)
    carrier = Twilio(account_sid=TWILIO_SID, auth_token="t")
    phone = Patter(carrier=carrier, phone_number="+15550001234", llm={"provider": "openai"},
                   agent={"first_message": "${GREETING}",
                          "voicemail_message": "${VOICEMAIL:-Please call back.}"})
    assert phone.config.admin.token == "admin-token-from-env-0123"
    assert phone.config.llm.api_key == "sk-from-env"
    assert phone.config.agent.first_message == "Hello from the environment."
    assert phone.config.agent.voicemail_message == "Please call back."
    # Given arguments win over the environment.
    phone = Patter(carrier=carrier, phone_number="+15550001234",
                   admin={"token": "admin-token-argument-0123"},
                   llm={"provider": "openai", "api_key": "sk-argument"})
    assert phone.config.admin.token == "admin-token-argument-0123"
    assert phone.config.llm.api_key == "sk-argument"
    monkeypatch.delenv("GREETING")
    with pytest.raises(ConfigError) as info:
        Patter(carrier=carrier, phone_number="+15550001234",
               agent={"first_message": "${GREETING}"})
    assert info.value.problems == [
        "agent.first_message: environment variable GREETING is not set"]


@pytest.mark.parametrize(("app_configured", "setup", "expected"), [
    (False, None, True), (True, None, False), (True, True, True), (False, False, False)])
async def test_serve_sets_up_logging_unless_the_application_did(
        monkeypatch: pytest.MonkeyPatch, app_configured: bool, setup: bool | None,
        expected: bool) -> None:
    import structlog

    import patterd.ops.logging
    import patterd.server

    monkeypatch.setenv("PATTERD_PUBLIC_URL", "https://gw.example.com")
    set_up: list[tuple[str, str]] = []
    served: list[object] = []

    async def fake_serve(config: object, carrier: object, *, config_path: object,
                         **hooks: object) -> None:
        served.append(config_path)

    monkeypatch.setattr(patterd.ops.logging, "configure_logging",
                        lambda level, fmt: set_up.append((level, fmt)))
    monkeypatch.setattr(patterd.server, "serve", fake_serve)
    if app_configured:
        structlog.configure(processors=[structlog.processors.KeyValueRenderer()])
    phone = Patter(carrier=Twilio(account_sid=TWILIO_SID, auth_token="t"),
                   phone_number="+15550001234", logging={"level": "warning"})
    await phone.serve(setup_logging=setup)
    assert served == [None]
    assert set_up == ([("warning", "json")] if expected else [])
