"""The Python API serving for real: the seed's snippets (quoted in the README) run
verbatim with credentials from the environment and answer a simulated call; the Patter-shaped
``phone.agent`` / ``serve(agent, port=…, host=…)`` / ``ready`` / ``call`` / ``disconnect``; the
README's complete offline example answers a simulated call."""

from __future__ import annotations

import ast
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from patterd import CallError, Patter, Twilio
from patterd.config import load_config
from patterd.simulate import WaitForAgent, say, simulate_call
from tests.support.fake_carriers import FakeTwilio
from tests.support.net import free_port, readyz
from tests.support.signing import TWILIO_SID, TWILIO_TOKEN

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SHIPPED = ROOT / "config" / "patter.yaml"
PHONE = "+15550001234"

# Contract §3, verbatim (the README quotes it).
SEED = '''\
from patterd import Patter, Twilio, Telnyx
phone = Patter(carrier=Twilio(), phone_number="+15550001234")        # reads env
phone = Patter(carrier=Twilio(account_sid="AC...", auth_token="..."), phone_number="+15550001234")
from patterd.carriers import twilio, telnyx
carrier = twilio.Carrier()                                           # same class as Twilio
carrier = telnyx.Carrier(api_key="KEY...", connection_id="...", public_key="...")
phone = Patter.from_config("patter.yaml")
await phone.serve()            # the daemon is this, driven by the YAML file
'''


async def wait_ready(port: int, task: asyncio.Future[Any] | None = None,
                     timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(readyz, port) != 200:   # the daemon runs on this loop
        if task is not None and task.done():
            task.result()                       # raises what stopped it
            raise AssertionError("serve() returned before it was ready")
        assert time.monotonic() < deadline, "not ready in time"
        await asyncio.sleep(0.1)


def shipped_env(tmp_path: Path, port: int, api_port: int) -> dict[str, str]:
    return {"PATTERD_PORT": str(port), "PATTERD_HOST": "127.0.0.1",
            "PATTERD_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "PATTERD_STORE_URL": f"sqlite:///{tmp_path / 'calls.db'}",
            "TWILIO_API_BASE_URL": f"http://127.0.0.1:{api_port}"}


async def goodbye_call(config: Any, port: int, phrase: str = "goodbye") -> Any:
    result = await simulate_call(config, f"http://127.0.0.1:{port}",
                                 [WaitForAgent(), await say(phrase),
                                  WaitForAgent(required=False)], timeout=60)
    assert result.outcome == "hung_up_by_agent", (result.outcome, result.errors)
    return result


async def test_the_seed_snippets_run_verbatim(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert SEED in README.read_text(encoding="utf-8")
    port, api_port = free_port(), free_port()
    shutil.copy(SHIPPED, tmp_path / "patter.yaml")     # the file the seed names
    env = {"TWILIO_ACCOUNT_SID": TWILIO_SID, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
           **shipped_env(tmp_path, port, api_port)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    code = compile(SEED, "<README snippet>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    scope: dict[str, Any] = {}
    served = asyncio.ensure_future(eval(code, scope))   # a coroutine: it awaits serve()
    try:
        await wait_ready(port, served)
        assert scope["carrier"].api_key == "KEY..." and scope["twilio"].Carrier is Twilio
        result = await goodbye_call(load_config(tmp_path / "patter.yaml"), port)
        assert {line.who for line in result.lines} == {"agent", "caller"}
    finally:
        await scope["phone"].disconnect()
        await asyncio.wait_for(served, 30)


async def test_agent_serve_ready_call_and_disconnect(tmp_path: Path) -> None:
    """The Patter shapes: phone.agent(...), serve(agent, port=, host=), await phone.ready, then
    a simulated call answered by that agent; phone.call() against a carrier API that is no
    longer there says how to place a simulated outbound call instead."""
    port, api_port = free_port(), free_port()
    phone = Patter(carrier=Twilio(TWILIO_SID, TWILIO_TOKEN, configure_number=False,
                                  api_base_url=f"http://127.0.0.1:{api_port}"),
                   phone_number=PHONE, webhook_url=f"http://127.0.0.1:{port}",
                   store={"url": f"sqlite:///{tmp_path / 'calls.db'}"})
    agent = phone.agent(first_message="Hello from {company}.", variables={"company": "Acme"},
                        rules=[{"phrases": ["hours"], "reply": "Nine to five."},
                               {"phrases": ["goodbye"], "reply": "Bye!",
                                "action": {"hangup": True}}])
    task = asyncio.create_task(phone.serve(agent, port=port, host="127.0.0.1"))
    try:
        assert await asyncio.wait_for(phone.ready, 60) == f"http://127.0.0.1:{port}"
        assert phone.config.agent == agent.agent and phone.config.server.port == port
        result = await goodbye_call(phone.config, port)
        assert [line.who for line in result.lines].count("agent") == 2   # hello, bye
        with pytest.raises(CallError) as info:       # the simulator (the API) has gone
            await phone.call(to="+15557654321", agent=agent)
        message = str(info.value)
        assert f"could not reach the carrier API at http://127.0.0.1:{api_port}" in message
        assert "patterd simulate --config PATH --outbound" in message
        with pytest.raises(ValueError, match="ring_timeout: expected whole seconds"):
            await phone.call(to="+15557654321", ring_timeout=2)
        with pytest.raises(ValueError, match="one agent per daemon"):
            await phone.call(to="+15557654321",
                             agent=phone.agent(first_message="Someone else."))
    finally:
        await phone.disconnect()
        await asyncio.wait_for(task, 30)
    assert task.result() is None
    with pytest.raises(RuntimeError, match="start it first"):
        await phone.call(to="+15557654321")


async def test_phone_call_places_the_call_through_the_carrier(tmp_path: Path,
                                                              fake_twilio) -> None:  # type: ignore[no-untyped-def]
    fake, base = fake_twilio
    port = free_port()
    phone = Patter(carrier=Twilio(TWILIO_SID, TWILIO_TOKEN, configure_number=False,
                                  api_base_url=base),
                   phone_number=PHONE, webhook_url=f"http://127.0.0.1:{port}",
                   store={"url": "sqlite:///:memory:"})
    task = asyncio.create_task(phone.serve(port=port, host="127.0.0.1"))
    try:
        await asyncio.wait_for(phone.ready, 60)
        sid = await phone.call(to="+15557654321", machine_detection=True,
                               voicemail_message="Please call {company} back.",
                               ring_timeout=20, variables={"company": "Acme"})
    finally:
        await phone.disconnect()
        await asyncio.wait_for(task, 30)
    (created,) = [r for r in fake.requests if r.method == "POST" and r.path.endswith("/Calls.json")]
    form = dict(created.form)
    assert sid and form["To"] == "+15557654321" and form["From"] == PHONE
    assert form["Timeout"] == "20" and form["MachineDetection"] == "DetectMessageEnd"


def readme_example() -> str:
    """The README's complete offline Python example (the block that calls phone.agent)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    (example,) = [b for b in blocks if "phone.agent(" in b and "asyncio.run(" in b]
    return example


async def test_the_readme_offline_example_answers_a_simulated_call(tmp_path: Path) -> None:
    port, api_port = free_port(), free_port()
    code = readme_example()
    assert "8000" in code and "8089" in code
    code = code.replace("8000", str(port)).replace("8089", str(api_port))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PATTERD_", "TWILIO_", "TELNYX_"))}
    log = tmp_path / "example.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while readyz(port) != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        # The example's settings are the shipped config's: simulate with that file.
        cfg = load_config(SHIPPED, env=shipped_env(tmp_path, port, api_port))
        result = await simulate_call(cfg, f"http://127.0.0.1:{port}", [
            WaitForAgent(), await say("what are your opening hours"), WaitForAgent(),
            await say("goodbye"), WaitForAgent(required=False)], timeout=60)
        assert result.outcome == "hung_up_by_agent", (result.outcome, result.errors)
        assert result.turns[0].latency is not None          # the question was answered
        proc.send_signal(signal.SIGINT)                      # Ctrl+C: drain, exit 0
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "patterd.db").exists()
