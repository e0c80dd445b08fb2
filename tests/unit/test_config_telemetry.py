"""``telemetry:``: the OTLP endpoint from the file or the environment, checked."""

from __future__ import annotations

import pytest

from patterd.config import ConfigError, build_config
from patterd.config import load as load_module
from patterd.config.render import render
from tests.conftest import twilio_raw


def test_off_by_default_and_the_file_or_the_environment_turns_it_on() -> None:
    assert build_config(twilio_raw(), env={}).telemetry.otlp_endpoint == ""
    cfg = build_config(twilio_raw(telemetry={"otlp_endpoint": "http://127.0.0.1:4318/"}),
                       env={})
    assert cfg.telemetry.otlp_endpoint == "http://127.0.0.1:4318"
    assert cfg.telemetry.service_name == "patterd"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example.com:4318",
           "OTEL_SERVICE_NAME": "voice-eu"}
    cfg = build_config(twilio_raw(), env=env)
    assert cfg.telemetry.otlp_endpoint == "https://otel.example.com:4318"
    assert cfg.telemetry.service_name == "voice-eu"
    cfg = build_config(twilio_raw(telemetry={"otlp_endpoint": "http://a:4318"}), env=env)
    assert cfg.telemetry.otlp_endpoint == "http://a:4318"      # the file wins


def test_bad_values_are_errors_with_their_key_path() -> None:
    with pytest.raises(ConfigError) as err:
        build_config(twilio_raw(telemetry={"otlp_endpoint": "grpc://x:4317", "sample": 1}),
                     env={})
    problems = "\n".join(err.value.problems)
    assert "telemetry.otlp_endpoint: expected an http(s):// URL" in problems
    assert "telemetry.sample" in problems


def test_without_the_extra_the_key_is_an_error_and_the_variable_is_ignored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_module, "otel_installed", lambda: False)
    with pytest.raises(ConfigError) as err:
        build_config(twilio_raw(telemetry={"otlp_endpoint": "http://127.0.0.1:4318"}), env={})
    assert "pip install 'patterd[otel]'" in err.value.problems[0]
    cfg = build_config(twilio_raw(), env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"})
    assert cfg.telemetry.otlp_endpoint == ""


def test_check_shows_the_endpoint_without_its_credentials() -> None:
    cfg = build_config(twilio_raw(telemetry={
        "otlp_endpoint": "https://user:hunter2@otel.example.com"}), env={})
    text = render(cfg)
    assert "telemetry:" in text and "hunter2" not in text
