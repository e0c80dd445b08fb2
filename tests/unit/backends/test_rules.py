"""The offline ``rules`` agent: matching, order, DTMF, fallback, placeholders."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from patterd.backends import TextChunk, ToolCall, create_llm
from patterd.backends.llm.rules import RulesLLM, context_variables, fill, words
from patterd.config.model import AgentConfig, BackendConfig, Rule, RuleAction

RULES = (
    Rule(("billing", "invoice", "pay my bill"), "1", "Connecting you to billing, {name}.",
         RuleAction("transfer", "billing")),
    Rule(("sales",), "2", "Sales it is.", RuleAction("transfer", "+15550001111")),
    Rule(("goodbye", "bye"), "", "Goodbye!", RuleAction("hangup")),
    Rule(("press keys",), "#", "Sending {digits} for {unknown}.", RuleAction("send_dtmf", "12#")),
    Rule(("hours", "opening times"), "", "We are open nine to five at {company}."),
    Rule((), "*9", "Secret menu."),
)
AGENT = AgentConfig(variables=MappingProxyType({"name": "Ann", "company": "Acme",
                                                "digits": "12#"}))


def make(rules: tuple[Rule, ...] = RULES, fallback: str = "Sorry, {name}, say billing.",
         agent: AgentConfig = AGENT) -> RulesLLM:
    llm = create_llm(BackendConfig("rules", rules=rules, fallback=fallback), agent)
    assert isinstance(llm, RulesLLM)
    return llm


async def collect(llm: RulesLLM, text: str | None = None, dtmf: str | None = None) -> list:
    return [e async for e in llm.respond([], user_text=text, dtmf=dtmf)]


@pytest.mark.parametrize("text", ["billing", "BILLING please", "I'd like to pay my bill.",
                                  "Invoice?", "uh, billing!", "  Billing\tdepartment  ",
                                  "my invoice, please"])
async def test_phrase_matches_case_and_punctuation_insensitive(text: str) -> None:
    events = await collect(make(), text)
    assert events == [TextChunk("Connecting you to billing, Ann."),
                      ToolCall("transfer_call", {"target": "billing"})]


@pytest.mark.parametrize("text", ["maybe", "byebye", "goodbyes", "salesperson", "billings",
                                  "pay my bills", "pay bill", "my bill pay"])
async def test_whole_words_only(text: str) -> None:
    assert make().match(text).rule is None


@pytest.mark.parametrize("text", ["ok bye", "Bye!", "bye-bye", "well, goodbye then"])
async def test_hangup(text: str) -> None:
    events = await collect(make(), text)
    assert events == [TextChunk("Goodbye!"), ToolCall("end_call", {})]


async def test_first_matching_rule_wins() -> None:
    # "sales" (rule 2) and "billing" (rule 1) both occur: the earlier rule wins, wherever
    # the phrase is in the utterance.
    m = make().match("sales or maybe billing, then goodbye")
    assert m.rule is RULES[0]
    reordered = make(rules=(RULES[2], RULES[0]))
    assert reordered.match("billing then goodbye").rule is RULES[2]


async def test_multiword_phrase_spans_punctuation() -> None:
    assert make().match("what are your opening, times?").rule is RULES[4]


async def test_dtmf() -> None:
    llm = make()
    assert await collect(llm, dtmf="2") == [
        TextChunk("Sales it is."), ToolCall("transfer_call", {"target": "+15550001111"})]
    assert llm.match(dtmf="*9").rule is RULES[5]
    assert llm.match(dtmf="#").rule is RULES[3]
    assert llm.match(dtmf="9").rule is None          # whole digit string must equal
    assert llm.match(dtmf="12").rule is None
    assert llm.match(dtmf="").rule is None


async def test_dtmf_and_text_together_first_rule_wins() -> None:
    # text says goodbye (rule 3), digits say sales (rule 2): rule order decides
    assert make().match("goodbye", dtmf="2").rule is RULES[1]


async def test_rule_without_dtmf_never_matches_digits() -> None:
    assert make(rules=(Rule(("bye",), "", "Bye"),)).match(dtmf="1").rule is None


async def test_send_dtmf_and_placeholders() -> None:
    events = await collect(make(), "please press keys")
    assert events == [TextChunk("Sending 12# for {unknown}."),
                      ToolCall("send_dtmf", {"digits": "12#"})]


async def test_rule_without_action_only_replies() -> None:
    assert await collect(make(), "your hours?") == [
        TextChunk("We are open nine to five at Acme.")]


@pytest.mark.parametrize("text", ["what's the weather", "", None, "   ", "!!!"])
async def test_fallback(text: str | None) -> None:
    assert await collect(make(), text) == [TextChunk("Sorry, Ann, say billing.")]


async def test_default_fallback_and_no_variables() -> None:
    llm = make(fallback="", agent=AgentConfig())
    assert await collect(llm, "hm") == [TextChunk("Sorry, I didn't catch that.")]
    assert llm.match("billing").reply == "Connecting you to billing, {name}."


async def test_empty_reply_emits_only_action() -> None:
    llm = make(rules=(Rule(("bye",), "", "", RuleAction("hangup")),))
    assert await collect(llm, "bye") == [ToolCall("end_call", {})]


def test_fill() -> None:
    v = {"name": "Ann", "n": "3"}
    assert fill("Hi {name}, {n} items", v) == "Hi Ann, 3 items"
    assert fill("{other} and {name}", v) == "{other} and Ann"
    assert fill("braces { name } {} {{name}} {name", v) == "braces { name } {} {Ann} {name"
    assert fill("{name!r} {name:>5}", v) == "{name!r} {name:>5}"


def test_words() -> None:
    assert words("I'd like—to PAY my bill!") == ["i'd", "like", "to", "pay", "my", "bill"]
    assert words("Didn’t 24/7 snake_case") == ["didn't", "24", "7", "snake", "case"]


def test_vocabulary_lists_phrases() -> None:
    assert make().vocabulary()[:4] == ["billing", "invoice", "pay my bill", "sales"]


async def test_call_variables_from_the_context_fill_replies_and_fallback() -> None:
    # The session passes the call's variables (POST /v1/calls over agent.variables) as
    # var_… entries of the context; they win over agent.variables.
    llm = make()
    context = {"call_id": "CA1", "var_name": "Bob", "var_unknown": "x"}
    reply = [e async for e in llm.respond([], user_text="billing", context=context)]
    assert reply[0] == TextChunk("Connecting you to billing, Bob.")
    fallback = [e async for e in llm.respond([], user_text="weather", context=context)]
    assert fallback == [TextChunk("Sorry, Bob, say billing.")]
    pressed = [e async for e in llm.respond([], user_text="press keys", context=context)]
    assert pressed[0] == TextChunk("Sending 12# for x.")
    # Without them, agent.variables as before; the context is not remembered.
    assert (await collect(llm, "billing"))[0] == TextChunk("Connecting you to billing, Ann.")


def test_context_variables() -> None:
    assert context_variables({"call_id": "CA1", "var_name": "Bob", "variable": "no"}) == {
        "name": "Bob"}
    assert context_variables(None) == {}


def test_fill_names_beyond_identifiers_in_one_pass() -> None:
    # agent.variables names are not restricted; a value is not filled again.
    assert fill("Hi {first-name}, {a}", {"first-name": "Ann", "a": "{first-name}"}) == \
        "Hi Ann, {first-name}"
