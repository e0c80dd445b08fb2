"""The offline providers carry their config names (``stt.provider`` etc.): the daemon's
metrics, traces and cost lines label them by that name, never by an empty one."""

from __future__ import annotations

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from patterd.backends import create_llm, create_stt, create_tts
from patterd.backends.errors import BackendError
from patterd.backends.failover import FailoverLLM, FailoverSTT, FailoverTTS
from patterd.backends.llm import PROVIDERS as LLMS
from patterd.backends.stt import PROVIDERS as STTS
from patterd.backends.tts import PROVIDERS as TTSS
from patterd.config.backends import DEFAULT_PROVIDER
from patterd.config.model import AgentConfig, BackendConfig
from patterd.gateway import Gateway
from tests.conftest import config, twilio_raw

AGENT = AgentConfig(first_message="Hello.")


def test_offline_providers_are_named_as_in_the_config() -> None:
    stt = create_stt(BackendConfig(DEFAULT_PROVIDER["stt"]), AGENT)
    llm = create_llm(BackendConfig(DEFAULT_PROVIDER["llm"]), AGENT)
    tts = create_tts(BackendConfig(DEFAULT_PROVIDER["tts"]), AGENT)
    assert (stt.name, llm.name, tts.name) == ("pocketsphinx", "rules", "espeak")
    assert stt.name in STTS and llm.name in LLMS and tts.name in TTSS
    # a chain is named after its first provider (the name the session reports)
    assert FailoverLLM([llm]).name == "rules" and FailoverTTS([tts]).name == "espeak"
    assert FailoverSTT([stt]).name == "pocketsphinx"


async def test_their_failures_are_counted_under_their_names() -> None:
    """``patterd_backend_errors_total`` by the gateway's own sink, as a daemon wires it."""
    gw = Gateway(config=config(twilio_raw()))
    stt = create_stt(BackendConfig("pocketsphinx"), AGENT)
    await stt.close()                            # every decode fails: "provider is closed"
    stream = FailoverSTT([stt], on_error=gw.backend_failed).open_stream()
    stream.push(b"\0\0" * 1600)
    with pytest.raises(BackendError, match="every STT provider failed"):
        await stream.finalize()
    await stream.close()
    tts = FailoverTTS([create_tts(BackendConfig("espeak", voice="xx-nonexistent")),
                       create_tts(BackendConfig("espeak"))], on_error=gw.backend_failed)
    speech = tts.synthesize("Hello.")
    assert b"".join([chunk async for chunk in speech]) and speech.provider == "espeak"
    families = text_string_to_metric_families(generate_latest(gw.metrics.registry).decode())
    errors = {(s.labels["backend"], s.labels["provider"]): s.value
              for f in families if f.name == "patterd_backend_errors"
              for s in f.samples if s.name == "patterd_backend_errors_total"}
    assert errors == {("stt", "pocketsphinx"): 1.0, ("tts", "espeak"): 1.0}
