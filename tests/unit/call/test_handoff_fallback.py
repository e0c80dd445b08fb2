"""A hand-off that cannot happen leaves the call where it is (and says why)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from patterd.backends.llm.base import Message
from patterd.call import handoff
from patterd.call.call_record import CallRecord
from patterd.call.keypad import Keypad
from patterd.call.registry import CallRegistry
from patterd.carriers.rest import RestError
from patterd.ops.metrics import Metrics


class Node:
    """The shared store as the hand-off sees it (the cluster node's query helpers)."""

    replica_id = "r-old"

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    async def _execute(self, sql: str, *args: Any) -> None:
        if sql.startswith("INSERT"):
            self.rows[args[0]] = json.loads(args[4])
        elif sql.startswith("UPDATE"):
            self.rows[args[0]] = {"cancelled": True}


class Control:
    restream_overlaps = False
    movable = True

    def __init__(self, fail: BaseException | None) -> None:
        self.fail = fail
        self.asked: list[tuple[str, str]] = []

    async def restream(self, call_id: str, parameters: dict[str, str], handoff_id: str
                       ) -> bool:
        self.asked.append((call_id, handoff_id))
        if self.fail is not None:
            raise self.fail
        return True


def sent(gw: Any, result: str) -> float | None:
    return gw.metrics.registry.get_sample_value("patterd_call_handoffs_total",
                                                {"result": result})


def gateway() -> SimpleNamespace:
    return SimpleNamespace(cluster=Node(), metrics=Metrics(), registry=CallRegistry())


def session(gw: Any, control: Control) -> SimpleNamespace:
    loop = asyncio.get_running_loop()
    replayed: list[bool] = []
    s = SimpleNamespace(gw=gw, call_id="CA" + "1" * 32, carrier="twilio", control=control,
                        loop=loop, ending=False, agent_busy=False, user_speaking=False,
                        recognising=0, _lines=[], history=[], variables={}, reprompted=False,
                        keypad=Keypad(set(), lambda d: None), call_started=loop.time(),
                        last_activity=loop.time(), parameters={"direction": "inbound"},
                        record=CallRecord("CA" + "1" * 32, "twilio"), handing_off=False,
                        restart_expected=False, replayed=replayed,
                        refresh_meter=lambda: None)
    s.replay_deferred = lambda: replayed.append(True)
    return s


async def test_the_carrier_refusing_the_move_keeps_the_call_and_cancels_the_state() -> None:
    gw = gateway()
    control = Control(RestError(400, "21220", "Call is not in-progress"))
    s = session(gw, control)
    assert await handoff.hand_off(gw, s) is False
    (call_id, handoff_id), = control.asked
    assert gw.cluster.rows[handoff_id] == {"cancelled": True}   # a late stream resumes nothing
    assert (s.handing_off, s.restart_expected, s.record.handed_off) == (False, False, False)
    assert s.replayed == [True]           # a turn that came meanwhile is answered here
    event = gw.registry.get(call_id).events[-1]
    assert (event["type"], event["ok"], event["stage"]) == ("handoff", False, "carrier")
    assert sent(gw, "failed") == 1 and sent(gw, "sent") == 0


async def test_a_move_the_carrier_takes_is_stored_and_marked_sent() -> None:
    gw = gateway()
    control = Control(None)
    s = session(gw, control)
    s.history.append(Message("user", "hi"))
    assert await handoff.hand_off(gw, s) is True
    (_, handoff_id), = control.asked
    assert gw.cluster.rows[handoff_id]["history"] == [{"role": "user", "content": "hi"}]
    assert s.handing_off and s.restart_expected and s.record.handed_off
    assert sent(gw, "sent") == 1 and sent(gw, "failed") == 0


async def test_a_call_that_ends_while_waiting_for_a_quiet_moment_is_not_moved(
        monkeypatch: Any) -> None:
    monkeypatch.setattr(handoff, "QUIET_WAIT", 1.0)
    gw = gateway()
    control = Control(None)
    s = session(gw, control)
    s.user_speaking = True
    asyncio.get_running_loop().call_later(0.1, lambda: setattr(s, "ending", True))
    assert await handoff.hand_off(gw, s) is False
    assert control.asked == [] and gw.cluster.rows == {}


async def test_a_reply_still_playing_after_the_wait_is_cut_and_its_sentence_said_again(
        monkeypatch: Any) -> None:
    """No quiet moment within the wait: the reply is cut where it is; the new replica is to
    say the sentence that was cut, whole, and those that had not played."""
    monkeypatch.setattr(handoff, "QUIET_WAIT", 0.1)
    gw = gateway()
    control = Control(None)
    s = session(gw, control)
    spoken = [SimpleNamespace(text="We are open nine to five.", played=True),
              SimpleNamespace(text="On Saturdays we open at ten,", played=False),
              SimpleNamespace(text="and we close at two.", played=False)]
    s._lines = [SimpleNamespace(spoken=spoken)]
    s.agent_busy = True

    async def stop_talking() -> None:
        s.agent_busy = False
        s._lines = []

    s._stop_talking = stop_talking
    assert await handoff.hand_off(gw, s) is True
    (_, handoff_id), = control.asked
    assert gw.cluster.rows[handoff_id]["resume_text"] == ("On Saturdays we open at ten, "
                                                          "and we close at two.")


async def test_the_new_replica_reads_the_state_again_after_a_store_blip(
        monkeypatch: Any) -> None:
    monkeypatch.setattr(handoff, "TAKE_RETRIES", (0.0, 0.01, 0.01))
    gw = gateway()
    state = handoff.capture(session(gw, Control(None)))
    calls: list[str] = []

    async def fetch(sql: str, *args: Any) -> list[dict[str, Any]]:
        calls.append(sql)
        if len(calls) == 1:
            raise ConnectionError("the store blinked")
        return [{"from_replica": "r-old", "state": json.dumps(state)}]

    gw.cluster._fetch = fetch
    resumed: list[str] = []
    new = session(gw, Control(None))
    new.handoff_id, new.handing_off = "h1", True
    new.say_again = resumed.append
    await handoff.resume(new)
    assert len(calls) == 2 and not new.handing_off and new.replayed == [True]
    event = gw.registry.get(new.call_id).events[-1]
    assert (event["type"], event["ok"], event["from"], event["to"]) == ("handoff", True,
                                                                         "r-old", "r-old")
    assert sent(gw, "resumed") == 1


def test_browser_calls_are_not_moved() -> None:
    from patterd.carriers.browser.control import BrowserControl
    from patterd.carriers.telnyx.control import TelnyxControl
    from patterd.carriers.twilio.control import TwilioControl
    assert not BrowserControl.movable and TwilioControl.movable and TelnyxControl.movable


async def test_a_bug_while_moving_leaves_the_call_here_and_listening(monkeypatch: Any) -> None:
    """The mover's own failure is reported; the call stays, its turns no longer wait."""
    gw = gateway()
    reported: list[tuple[str, str]] = []
    gw.supervisor = SimpleNamespace(report=lambda component, exc, **kw: reported.append(
        (component, kw.get("call_id", ""))))
    gw.config = SimpleNamespace(server=SimpleNamespace(handoff_delay=0.0))
    s = session(gw, Control(None))
    s.handoff_tried = False
    gw.sessions = [s]
    tasks: list[asyncio.Task[Any]] = []
    gw.spawn = lambda coro, name="": tasks.append(asyncio.ensure_future(coro)) or tasks[-1]

    async def broken(gw_: Any, session_: Any) -> bool:
        session_.handing_off = True
        raise RuntimeError("a bug")

    async def peers(gw_: Any) -> bool:
        return True

    monkeypatch.setattr(handoff, "hand_off", broken)
    monkeypatch.setattr(handoff, "_peer_ready", peers)
    mover = asyncio.ensure_future(handoff.hand_off_all(gw, asyncio.get_running_loop().time()
                                                       + 0.5))
    await asyncio.sleep(0.3)
    await asyncio.gather(*tasks)
    mover.cancel()
    assert reported == [("call", s.call_id)]
    assert not s.handing_off and s.replayed == [True]
    assert gw.registry.get(s.call_id).events[-1]["stage"] == "internal"
