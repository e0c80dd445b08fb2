"""The merge of several replicas' parts of one call (patterd/store/merge.py): the same parts
give the same record whatever order they reached the store in, and a record that says the
call ended never reads as if it were still being set up."""

from __future__ import annotations

import itertools
from typing import Any

from patterd.store.merge import carrier_price_part, merge_parts

T0 = 1_700_000_000.0
CALL = {"call_id": "CAkilled", "carrier": "twilio", "direction": "inbound"}


def part(**fields: Any) -> dict[str, Any]:
    return {**CALL, "status": "initiated", "outcome": None, "ended_at": None,
            "status_history": [], "events": [], "transcript": [], "turns": [], "cost": None,
            **fields}


# A call whose media replica was killed (tests/integration/test_load_balanced.py): the replica
# that answered the webhook, the killed one (it held the stream), the survivor that hung the
# call up through the carrier, and the replica the carrier's final status callback reached.
WEBHOOK = part(**{"from": "+12025550475", "to": "+15550001234"}, created_at=T0,
               updated_at=T0)
KILLED = part(created_at=T0 + 0.4, updated_at=T0 + 6.0,
              transcript=[{"role": "agent", "text": "Hello.", "at": T0 + 1.0},
                          {"role": "caller", "text": "", "dtmf": "1", "at": T0 + 2.0}],
              turns=[{"at": T0 + 2.0, "latency": 0.3}])
SURVIVOR = part(created_at=T0 + 11.0, updated_at=T0 + 11.3, ended_at=T0 + 11.3,
                status="completed", outcome="replica_lost",
                status_history=[{"status": "completed", "sequence": None, "at": T0 + 11.3,
                                 "via": "hangup"}],
                events=[{"type": "hangup", "by": "gateway", "reason": "replica_lost",
                         "at": T0 + 11.3}])
CALLBACK = part(created_at=T0 + 11.5, updated_at=T0 + 11.5, ended_at=T0 + 11.5,
                status="completed", outcome="completed",
                status_history=[{"status": "completed", "sequence": 3, "at": T0 + 11.5}])


def every_order(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [merge_parts(list(order)) for order in itertools.permutations(parts)]


def test_the_same_parts_merge_alike_in_every_order() -> None:
    merged = every_order(WEBHOOK, KILLED, SURVIVOR, CALLBACK)
    assert all(m == merged[0] for m in merged)
    rec = merged[0]
    assert rec["status"] == "completed" and rec["outcome"] == "replica_lost"
    assert rec["ended_at"] == T0 + 11.5 and rec["created_at"] == T0
    assert rec["from"] == "+12025550475" and rec["dtmf"] == "1"
    assert [h.get("via") for h in rec["status_history"]] == ["hangup", None]


def test_a_call_hung_up_by_a_survivor_reads_ended_before_the_carriers_callback() -> None:
    """The window the load-balanced test fell into: the survivor's part is stored, the
    carrier's final callback is not yet."""
    for rec in every_order(WEBHOOK, KILLED, SURVIVOR):
        assert rec["ended_at"] == T0 + 11.3
        assert rec["status"] == "completed" and rec["outcome"] == "replica_lost"
        assert any(e["type"] == "hangup" for e in rec["events"])


def test_a_part_that_knows_less_never_moves_the_status_back() -> None:
    answered = part(created_at=T0, updated_at=T0 + 1.0, status="in-progress")
    late = part(created_at=T0 + 5.0, updated_at=T0 + 9.0)          # "initiated", written last
    ringing = part(created_at=T0 + 0.5, updated_at=T0 + 8.0, status="ringing")
    assert {m["status"] for m in every_order(answered, late, ringing)} == {"in-progress"}


def test_of_two_specific_outcomes_the_first_end_wins() -> None:
    """A replica died just after its call ended: the survivor that reaped it says
    ``replica_lost``, but the call had already ended for its own reason."""
    ended_here = part(created_at=T0, updated_at=T0 + 30.0, ended_at=T0 + 30.0,
                      outcome="hung_up_by_agent")
    reaped = part(created_at=T0 + 35.0, updated_at=T0 + 36.0, ended_at=T0 + 36.0,
                  status="completed", outcome="replica_lost")
    for rec in every_order(ended_here, reaped, CALLBACK | {"created_at": T0 + 31.0}):
        assert rec["outcome"] == "hung_up_by_agent"


def test_the_carriers_price_joins_the_cost_in_any_order() -> None:
    served = part(created_at=T0, updated_at=T0 + 60.0, ended_at=T0 + 60.0, status="completed",
                  outcome="completed",
                  cost={"carrier": 0.014, "stt": 0.002, "llm": 0.003, "tts": 0.001,
                        "total": 0.02, "currency": "USD", "carrier_source": "estimate",
                        "billed_seconds": 60.0})
    merged = every_order(served, carrier_price_part(served, -0.0085))
    assert all(m == merged[0] for m in merged)
    assert merged[0]["cost"] == {"carrier": 0.0085, "stt": 0.002, "llm": 0.003, "tts": 0.001,
                                 "total": 0.0145, "currency": "USD",
                                 "carrier_source": "carrier", "billed_seconds": 60.0}
    assert merged[0]["outcome"] == "completed" and merged[0]["updated_at"] == T0 + 60.0
