"""Gathering key presses (patterd.call.keypad) and the call's variables (call.context)."""

from __future__ import annotations

import asyncio

import pytest

from patterd.call import keypad
from patterd.call.context import call_variables, llm_context
from patterd.call.keypad import Keypad, dtmf_grammar
from patterd.config.model import BackendConfig, Rule

MENU = ("1", "*9", "12", "#")


class Answers:
    """What the keypad answered on its own (the inter-digit timeout)."""

    def __init__(self) -> None:
        self.got: list[str] = []

    def __call__(self, digits: str) -> None:
        self.got.append(digits)


async def test_a_complete_sequence_no_longer_rule_continues_answers_at_once() -> None:
    pad = Keypad(("1", "*9", "#"), Answers())
    assert pad.press("1") == "1"
    assert pad.press("#") == "#"
    assert pad.press("*") is None and pad.pending == "*"
    assert pad.press("9") == "*9" and pad.pending == ""


async def test_a_dead_end_answers_with_every_digit_pressed() -> None:
    pad = Keypad(MENU, Answers())
    assert pad.press("5") == "5"                 # nothing starts with 5
    assert pad.press("*") is None
    assert pad.press("5") == "*5"                # once, with both digits


async def test_lower_case_keys_match_upper_case_rules() -> None:
    pad = Keypad(("*A",), Answers())
    assert pad.press("*") is None
    assert pad.press("a") == "*A"


async def test_waits_while_a_longer_rule_may_follow_then_times_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keypad, "INTER_DIGIT_TIMEOUT", 0.05)
    answers = Answers()
    pad = Keypad(MENU, answers)
    assert pad.press("1") is None                # "1" is a rule, but so is "12"
    await asyncio.sleep(0.15)
    assert answers.got == ["1"] and pad.pending == ""
    assert pad.press("*") is None
    await asyncio.sleep(0.15)
    assert answers.got == ["1", "*"]             # an unfinished entry is answered too


async def test_each_key_restarts_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keypad, "INTER_DIGIT_TIMEOUT", 0.2)
    answers = Answers()
    pad = Keypad(("1234",), answers)
    for key in "123":
        assert pad.press(key) is None
        await asyncio.sleep(0.12)
    assert answers.got == []                     # 0.36 s in all, but never 0.2 s between keys
    await asyncio.sleep(0.2)
    assert answers.got == ["123"]


async def test_the_terminator_ends_the_entry_and_is_dropped_after_a_rule() -> None:
    answers = Answers()
    pad = Keypad(("1", "12"), answers)
    assert pad.press("1") is None
    assert pad.press("#") == "1"                 # "1#" is rule "1", without waiting
    assert pad.press("#") == "#"                 # alone: a key like the others
    pad = Keypad(("12", "12#9"), answers)
    assert pad.press("1") is None and pad.press("2") is None
    assert pad.press("#") is None                # a rule needs the '#': keep gathering
    assert pad.press("9") == "12#9"
    await asyncio.sleep(0)
    assert answers.got == []


async def test_without_sequences_every_key_answers_at_once() -> None:
    pad = Keypad((), Answers())
    assert [pad.press(k) for k in "12*#"] == ["1", "2", "*", "#"]


async def test_take_and_close_cancel_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keypad, "INTER_DIGIT_TIMEOUT", 0.05)
    answers = Answers()
    pad = Keypad(MENU, answers)
    pad.press("*")
    assert pad.take() == "*" and pad.take() == ""
    pad.press("1")
    pad.close()
    await asyncio.sleep(0.15)
    assert answers.got == [] and pad.pending == ""


async def test_a_very_long_entry_is_answered() -> None:
    pad = Keypad(("1" * 40,), Answers())
    pressed = [pad.press("1") for _ in range(keypad.MAX_DIGITS)]
    assert pressed[:-1] == [None] * (keypad.MAX_DIGITS - 1)
    assert pressed[-1] == "1" * keypad.MAX_DIGITS


def test_dtmf_grammar_takes_every_rules_provider_of_the_chain() -> None:
    rules = BackendConfig("rules", rules=(Rule(("a",), "1"), Rule(("b",), ""),
                                          Rule((), "*b")))
    assert dtmf_grammar(rules) == {"1", "*B"}
    cloud = BackendConfig("openai", failover=(rules,))
    assert dtmf_grammar(cloud) == {"1", "*B"}
    assert dtmf_grammar(BackendConfig("openai")) == frozenset()


@pytest.mark.parametrize("params,expected", [
    ({}, {"name": "Ann", "company": "Acme"}),
    ({"var_name": "Bob", "direction": "outbound", "vm": "x"},
     {"name": "Bob", "company": "Acme"}),
    ({"var_extra": "1"}, {"name": "Ann", "company": "Acme", "extra": "1"}),
])
def test_call_variables_per_call_over_agent(params: dict[str, str],
                                            expected: dict[str, str]) -> None:
    assert call_variables({"name": "Ann", "company": "Acme"}, params) == expected


def test_llm_context_carries_the_variables() -> None:
    ctx = llm_context("CA1", "twilio", {"direction": "outbound", "to": "+1555"},
                      {"name": "Bob"})
    assert ctx == {"call_id": "CA1", "carrier": "twilio", "direction": "outbound",
                   "from": "", "to": "+1555", "var_name": "Bob"}
