"""Placing a call: the voicemail text leaves with its placeholders filled, since the carrier
may speak it without this daemon (Twilio ``<Say>``, Telnyx ``speak``)."""

from __future__ import annotations

import pytest

from patterd.call.outbound import parse_outbound, stream_parameters


def test_voicemail_is_filled_with_per_call_variables_over_the_agents() -> None:
    call = parse_outbound(
        {"to": "+15557654321", "variables": {"name": "Alex"}},
        default_amd=True, default_voicemail="Hi {name}, this is {company}. {unknown} stays.",
        agent_variables={"name": "caller", "company": "Example Co"})
    assert call.voicemail_message == "Hi Alex, this is Example Co. {unknown} stays."
    assert call.machine_detection and call.variables == {"name": "Alex"}
    params = stream_parameters(call, "+15550001234")
    assert params["vm"] == call.voicemail_message and params["var_name"] == "Alex"


def test_a_per_call_voicemail_is_filled_too_and_a_value_is_not_filled_again() -> None:
    call = parse_outbound(
        {"to": "+15557654321", "voicemail_message": "Call {who} back",
         "variables": {"who": "{name}", "name": "x"}},
        default_amd=False, default_voicemail="", agent_variables={})
    assert call.voicemail_message == "Call {name} back"


@pytest.mark.parametrize("doc, field", [
    ({"to": "555"}, "to"), ({"to": "+15557654321", "variables": {"1x": "a"}}, "variables"),
    ({"to": "+15557654321", "voicemail_message": 5}, "voicemail_message")])
def test_bad_requests_name_the_field(doc: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        parse_outbound(doc, default_amd=False, default_voicemail="")
