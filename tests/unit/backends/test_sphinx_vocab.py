"""Building the offline recogniser's vocabulary: pronunciations, weak onsets, homophones."""

from __future__ import annotations

from pathlib import Path

from patterd.backends.stt.sphinx_vocab import (build_model, ipa_to_arpabet, model_paths, normalise,
                                               sound_alike)


def test_ipa_to_arpabet() -> None:
    assert ipa_to_arpabet("tʃˈɜːtʃ") == "CH ER CH"
    assert ipa_to_arpabet("ˈɑːpɚɹeɪɾɚ") == "AA P ER EY T ER"
    assert ipa_to_arpabet("bˈʌʔn̩") == "B AH T AH N"
    assert ipa_to_arpabet("qʘ") is None and ipa_to_arpabet("") is None


def test_weak_onsets_only_for_rule_words(tmp_path: Path) -> None:
    built = build_model(["sales", "help"], ["thanks for calling"], str(tmp_path),
                        model_paths()[1])
    assert built is not None
    assert built.pronunciations["sales"] == ["S EY L Z", "EY L Z"]
    assert built.pronunciations["help"] == ["HH EH L P", "EH L P"]
    assert built.pronunciations["thanks"] == ["TH AE NG K S"]


def test_normalise_spells_digits() -> None:
    assert normalise("Press 1, then 42#!") == ["press", "one", "then", "four", "two"]


def test_sound_alike_only_across_groups() -> None:
    prons = {"buy": ["B AY"], "bye": ["B AY"], "by": ["B AY"], "sales": ["S EY L Z"]}
    assert sound_alike([["sales", "buy"], ["bye", "by"]], prons) == [("buy", "bye"), ("buy", "by")]
    assert sound_alike([["buy", "bye"]], prons) == []


def test_no_vocabulary(tmp_path: Path) -> None:
    assert build_model([], ["", "!"], str(tmp_path), model_paths()[1]) is None
