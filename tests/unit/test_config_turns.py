"""Config: the ``vad`` section's end-of-turn model and silence bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from patterd.config import ConfigError, build_config
from tests.conftest import twilio_raw


def vad(**keys: object) -> dict[str, object]:
    raw = twilio_raw()
    raw["vad"] = {"provider": "silero", **keys}
    return build_config(raw, env={}).vad.options  # type: ignore[return-value]


def problems(**keys: object) -> list[str]:
    raw = twilio_raw()
    raw["vad"] = {"provider": "silero", **keys}
    with pytest.raises(ConfigError) as info:
        build_config(raw, env={})
    return info.value.problems


def test_the_turn_model_is_on_by_default_with_its_bounds() -> None:
    opts = vad()
    assert opts["turn_model"] == "smart-turn-v3"
    assert (opts["turn_silence"], opts["min_silence"], opts["turn_max_silence"]) == (0.2, 0.5, 1.3)
    assert opts["turn_threshold"] == 0.5 and opts["turn_cpu_share"] == 0.5


@pytest.mark.parametrize("off", [False, "none", "off", "false", "None"])
def test_the_turn_model_switches_off(off: object) -> None:
    assert vad(turn_model=off)["turn_model"] == "none"


def test_with_the_model_off_the_turn_bounds_are_not_checked() -> None:
    assert vad(turn_model=False, min_silence=0.15)["min_silence"] == 0.15


def test_a_model_file_of_ones_own(tmp_path: Path) -> None:
    model = tmp_path / "turn.onnx"
    model.write_bytes(b"x")
    assert vad(turn_model=str(model))["turn_model"] == str(model)
    assert problems(turn_model=str(tmp_path / "missing.onnx")) == [
        f"vad.turn_model: expected smart-turn-v3, false, or the path of an .onnx file that "
        f"exists, got {str(tmp_path / 'missing.onnx')!r}"]
    assert problems(turn_model=3)[0].startswith("vad.turn_model: expected smart-turn-v3")


def test_the_silence_bounds_must_be_in_order() -> None:
    assert problems(turn_silence=0.6) == [
        "vad.turn_silence: the silence bounds must be in order: turn_silence (0.6) < "
        "min_silence (0.5) <= turn_max_silence (1.3), or turn_model: false"]
    assert problems(turn_max_silence=0.4)[0].startswith("vad.turn_silence: the silence bounds")


@pytest.mark.parametrize(("key", "value"), [("threshold", 1.5), ("turn_threshold", 2),
                                            ("turn_cpu_share", 0.01), ("min_silence", 20),
                                            ("turn_max_silence", 11)])
def test_out_of_range_values_are_named(key: str, value: float) -> None:
    assert any(p.startswith(f"vad.{key}: expected") for p in problems(**{key: value}))


def test_energy_takes_the_same_keys() -> None:
    raw = twilio_raw()
    raw["vad"] = {"provider": "energy", "turn_model": False, "min_silence": 0.4}
    assert build_config(raw, env={}).vad.options["min_silence"] == 0.4
