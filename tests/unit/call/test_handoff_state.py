"""A conversation as data (hand-off): what one replica captures, another restores."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from patterd.backends.llm.base import Message, ToolCall
from patterd.call.call_record import CallRecord
from patterd.call.handoff_state import capture, message_dict, message_of, restore
from patterd.call.keypad import Keypad
from patterd.call.records import snapshot
from patterd.ops.cost import Usage


def session(loop: asyncio.AbstractEventLoop, **over: Any) -> SimpleNamespace:
    """The parts of a CallSession that a hand-off reads and writes."""
    answered: list[str] = []
    s = SimpleNamespace(loop=loop, history=[Message("system", "Be brief.")], variables={},
                        keypad=Keypad({"*42"}, answered.append), reprompted=False,
                        call_started=loop.time(), last_activity=loop.time(),
                        record=CallRecord("CA1", "twilio"), answered=answered,
                        refresh_meter=lambda: None)
    s.__dict__.update(over)
    return s


HISTORY = [Message("system", "You are the receptionist of {shop}."),
           Message("user", "what are your opening hours"),
           Message("assistant", "Let me check.", (ToolCall("hours", {"day": "mon"}, "call_1"),)),
           Message("tool", '{"open": "9-5"}', tool_call_id="call_1", name="hours"),
           Message("assistant", "We are open nine to five."),
           Message("user", "[The caller pressed 4 on the keypad]")]


def test_every_kind_of_history_entry_survives_json() -> None:
    for message in HISTORY:
        assert message_of(json.loads(json.dumps(message_dict(message)))) == message
    with pytest.raises(ValueError, match="role"):
        message_of({"role": "developer", "content": "x"})


async def test_a_captured_conversation_is_restored_whole_on_another_session() -> None:
    loop = asyncio.get_running_loop()
    old = session(loop, history=list(HISTORY), variables={"shop": "Bella"}, reprompted=True,
                  call_started=loop.time() - 42.0, last_activity=loop.time() - 3.0)
    old.record.usage.add(Usage(stt_seconds=12.5, tts_chars=300, stt_by={"deepgram": 12.5},
                               llm_by={"openai": [100, 20, 0]}))
    old.record.media_seconds = 41.5
    old.keypad.press("*")
    old.keypad.press("4")                       # "*4" of "*42": waiting for more
    state = json.loads(json.dumps(capture(old, resume_text="We are open nine to five.")))
    assert state["keys"] == "*4" and state["resume_text"] == "We are open nine to five."
    new = session(loop)
    new.record.usage.add(Usage(stt_seconds=0.5))   # what the new stream metered already
    restore(new, state)
    assert new.history == HISTORY and new.variables == {"shop": "Bella"} and new.reprompted
    assert abs((loop.time() - new.call_started) - 42.0) < 0.5      # max_call_seconds go on
    assert abs((loop.time() - new.last_activity) - 3.0) < 0.5      # and the silence timer
    assert new.record.usage.stt_seconds == 13.0 and new.record.usage.tts_chars == 300
    assert new.record.usage.llm_by == {"openai": [100, 20, 0]}
    assert new.record.media_seconds == 41.5
    assert new.keypad.pending == "*4"
    new.keypad.press("2")                       # the entry goes on where it was
    assert new.answered == [] and new.keypad.pending == ""


async def test_keys_restored_alone_are_answered_after_the_inter_digit_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import patterd.call.keypad as keypad
    monkeypatch.setattr(keypad, "INTER_DIGIT_TIMEOUT", 0.05)
    new = session(asyncio.get_running_loop())
    new.keypad.restore("*4")
    await asyncio.sleep(0.15)
    assert new.answered == ["*4"]


async def test_an_unreadable_state_changes_nothing() -> None:
    loop = asyncio.get_running_loop()
    good = capture(session(loop, history=list(HISTORY)))
    for broken in ({**good, "v": 99}, {**good, "history": [{"role": "nobody"}]},
                   {**good, "usage": {"no_such_field": 1}}):
        new = session(loop)
        before = (list(new.history), dict(new.variables), new.record.media_seconds)
        with pytest.raises((ValueError, KeyError, TypeError)):
            restore(new, broken)
        assert (new.history, new.variables, new.record.media_seconds) == before


def test_a_moved_calls_old_part_carries_no_meter_for_a_crash_recovery_to_count_again() -> None:
    rec = CallRecord("CA1", "twilio")
    rec.media_seconds = 10.0
    assert "meter" in snapshot(rec, streaming=True)
    rec.handed_off = True
    part = snapshot(rec, streaming=True)
    assert "meter" not in part and "streaming" not in part
