"""YAML mistakes explained as their cause: an unquoted + number, a tab, a misspelt section."""

from __future__ import annotations

import textwrap

import pytest

from patterd.config import ConfigError, parse_config
from tests.support.signing import TWILIO_SID

BASE = textwrap.dedent(f"""\
    server: {{public_url: "https://voice.example.com"}}
    carrier: {{account_sid: {TWILIO_SID}, auth_token: tok}}
    store: {{url: "sqlite:///:memory:"}}
    """)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={}, source="patter.yaml")
    return info.value.problems


def test_an_unquoted_phone_number_says_quote_it() -> None:
    problems = problems_of(BASE + "phone_number: +15550001234\n")
    # One problem, its cause: not also "phone_number: required".
    assert problems == [
        "phone_number: expected an E.164 number like +15550001234, got '15550001234' (YAML "
        "read an unquoted +15550001234 as the number 15550001234: quote it, \"+15550001234\")"]


def test_unquoted_numbers_as_transfer_targets_say_quote_it() -> None:
    problems = problems_of(BASE + textwrap.dedent("""\
        phone_number: "+15550001234"
        agent:
          transfer_targets: {sales: +15550001001}
        llm:
          rules:
            - phrases: [operator]
              action: {transfer: +15550009999}
        """))
    assert len(problems) == 2
    assert problems[0].startswith("agent.transfer_targets.sales: expected an E.164 number")
    assert problems[0].endswith('quote it, "+15550001001")')
    assert problems[1].startswith("llm.rules[0].action.transfer: expected a name from")
    assert problems[1].endswith('quote it, "+15550009999")')


@pytest.mark.parametrize("text, where", [
    ("server:\n\tport: 8000\n", "line 2, column 1"),
    ("server:\n  port: 8000\n\t\n  host: x\n", "line 3, column 1"),
])
def test_a_tab_is_named_in_plain_words(text: str, where: str) -> None:
    assert problems_of(text) == [
        f"patter.yaml: {where}: a tab character; YAML indents with spaces only "
        "(replace the tab with spaces)"]


def test_other_syntax_errors_keep_their_position() -> None:
    assert problems_of("x: [1\n") == [
        "patter.yaml: not valid YAML at line 2, column 1: did not find expected ',' or ']'"]


def test_a_misspelt_section_comes_before_what_it_makes_missing() -> None:
    text = BASE.replace("carrier:", "carier:") + 'phone_number: "+15550001234"\n'
    problems = problems_of(text)
    assert problems[0] == "carier: unknown key (did you mean 'carrier'?)"
    assert "carrier.account_sid: required (or set TWILIO_ACCOUNT_SID)" in problems[1:]


def test_a_misspelt_key_comes_before_its_required_twin() -> None:
    text = BASE.replace('public_url:', 'public_ur:') + 'phone_number: "+15550001234"\n'
    problems = problems_of(text)
    assert problems[0] == "server.public_ur: unknown key (did you mean 'public_url'?)"
    assert problems[1].startswith("server.public_url: required")
