"""``store.retention_days``: a number of days ≥ 0 (0, the default, keeps records forever),
checked with key-path errors and shown by ``patterd check``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from patterd.config import ConfigError, build_config
from patterd.config.render import to_plain
from tests.conftest import twilio_raw

ROOT = Path(__file__).resolve().parents[2]


def problems_of(raw: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(raw, env=env or {})
    return info.value.problems


def test_default_keeps_records_forever() -> None:
    cfg = build_config(twilio_raw(), env={})
    assert cfg.store.retention_days == 0


@pytest.mark.parametrize("value, days", [(30, 30.0), (0, 0.0), (0.5, 0.5), ("7", 7.0),
                                         (36500, 36500.0)])
def test_accepted_values(value: object, days: float) -> None:
    cfg = build_config(twilio_raw(store={"retention_days": value}), env={})
    assert cfg.store.retention_days == days


def test_value_from_the_environment() -> None:
    raw = twilio_raw(store={"retention_days": "${KEEP_DAYS:-90}"})
    assert build_config(raw, env={}).store.retention_days == 90
    assert build_config(raw, env={"KEEP_DAYS": "14"}).store.retention_days == 14


@pytest.mark.parametrize("value, problem", [
    (-1, "store.retention_days: expected at least 0, got -1.0"),
    ("forever", "store.retention_days: expected a number, got 'forever'"),
    (True, "store.retention_days: expected a number, got a boolean (true)"),
    (float("nan"), "store.retention_days: expected a finite number, got nan"),
    (1e9, "store.retention_days: expected at most 36500, got 1000000000.0"),
    ([30], "store.retention_days: expected a number, got a list"),
])
def test_bad_values_name_the_key(value: object, problem: str) -> None:
    assert problems_of(twilio_raw(store={"retention_days": value})) == [problem]


def test_misspelt_key_gets_a_hint() -> None:
    probs = problems_of(twilio_raw(store={"retention_day": 30}))
    assert probs == ["store.retention_day: unknown key (did you mean 'retention_days'?)"]


def test_every_store_problem_is_reported_at_once() -> None:
    probs = problems_of(twilio_raw(store={"url": "mysql://x", "retention_days": -2}))
    assert sorted(p.split(":")[0] for p in probs) == ["store.retention_days", "store.url"]


def test_rendered_config_shows_it() -> None:
    shown = to_plain(build_config(twilio_raw(store={"retention_days": 90}), env={}))
    assert shown["store"] == {"url": "sqlite:///:memory:", "retention_days": 90.0,
                              "max_pending": 10_000}


def test_patterd_check_prints_it_and_refuses_a_negative(tmp_path: Path) -> None:
    path = tmp_path / "patter.yaml"
    path.write_text(yaml.safe_dump(twilio_raw(store={"retention_days": 30})))
    run = [sys.executable, "-m", "patterd", "check", "--config", str(path)]
    out = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["store"]["retention_days"] == 30
    path.write_text(yaml.safe_dump(twilio_raw(store={"retention_days": -1})))
    out = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=dict(os.environ))
    assert out.returncode == 2
    assert "store.retention_days: expected at least 0, got -1" in out.stderr
