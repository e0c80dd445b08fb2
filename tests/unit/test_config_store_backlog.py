"""``store.max_pending``: the backlog of call snapshots past which webhooks about calls not
served here are held back (default 10,000)."""

from __future__ import annotations

import pytest

from patterd.config import ConfigError, build_config
from tests.conftest import twilio_raw


def problems_of(raw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(raw, env={})
    return info.value.problems


def test_default_and_set_values() -> None:
    assert build_config(twilio_raw(), env={}).store.max_pending == 10_000
    raw = twilio_raw(store={"max_pending": "${BACKLOG:-2500}"})
    assert build_config(raw, env={}).store.max_pending == 2500
    assert build_config(raw, env={"BACKLOG": "50000"}).store.max_pending == 50_000


@pytest.mark.parametrize("value, problem", [
    (5, "store.max_pending: expected at least 10, got 5"),
    ("lots", "store.max_pending: expected an integer, got 'lots'"),
    (True, "store.max_pending: expected an integer, got a boolean (true)"),
])
def test_bad_values_name_the_key(value: object, problem: str) -> None:
    assert problems_of(twilio_raw(store={"max_pending": value})) == [problem]
