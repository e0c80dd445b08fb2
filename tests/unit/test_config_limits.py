"""The config file's YAML limits (patterd/config/bounded_yaml.py): size, aliases expanded,
cycles, nesting — each refused with the file named and the limit said, before anything big is
built; a file within the limits (anchors and merge keys included) loads as PyYAML's own."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest
import yaml

from patterd.config import ConfigError, load_config, parse_config
from patterd.config.bounded_yaml import (MAX_FILE_BYTES, MAX_NODES, BoundedLoader,
                                         PyBoundedLoader, YamlLimitError, load_yaml)
from tests.conftest import twilio_raw

LOADERS = [PyBoundedLoader] + ([BoundedLoader] if BoundedLoader is not PyBoundedLoader else [])


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """"A billion laughs": ``width ** levels`` strings once the aliases are expanded, from a
    few hundred bytes."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("loader", LOADERS, ids=lambda c: c.__name__)
def test_anchors_and_merge_keys_within_the_limits_load_as_pyyaml_does(loader: type) -> None:
    text = ("base: &base {voice: en-us, rate: 1.0}\n"
            "tts: {<<: *base, rate: 1.2}\n"
            "phrases: &p [sales, pricing]\n"
            "again: *p\n"
            "when: 2024-01-01\n"
            "hex: 0x10\n")
    assert load_yaml(text, loader_class=loader) == yaml.safe_load(text)


@pytest.mark.parametrize("loader", LOADERS, ids=lambda c: c.__name__)
def test_an_alias_bomb_is_refused_before_it_is_built(loader: type) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(YamlLimitError) as info:
        load_yaml(alias_bomb(), loader_class=loader)
    assert time.monotonic() - started < 1.0
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 10_000, grown_kib             # 9**9 strings would be gigabytes
    assert f"more than {MAX_NODES} nodes once its aliases" in info.value.problem
    assert info.value.problem_mark.line > 0           # where the budget ran out


@pytest.mark.parametrize("loader", LOADERS, ids=lambda c: c.__name__)
def test_the_node_budget_counts_each_alias_as_what_it_repeats(loader: type) -> None:
    eleven = "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"     # 11 nodes
    # 1 mapping + 2 keys + 11 + 11 (the alias) = 25
    assert load_yaml(eleven + "b: *a\n", max_nodes=25, loader_class=loader)["b"][9] == 10
    with pytest.raises(YamlLimitError, match="more than 24 nodes once its aliases"):
        load_yaml(eleven + "b: *a\n", max_nodes=24, loader_class=loader)
    # Without aliases the message does not mention them.
    with pytest.raises(YamlLimitError) as info:
        load_yaml("[" + ", ".join(["x"] * 30) + "]", max_nodes=20, loader_class=loader)
    assert info.value.problem == ("the document has more than 20 nodes (the limit for a "
                                  "config file)")


@pytest.mark.parametrize("loader", LOADERS, ids=lambda c: c.__name__)
def test_a_cyclic_alias_and_deep_nesting_are_refused(loader: type) -> None:
    with pytest.raises(YamlLimitError, match=r"alias \*a refers to a node that contains it"):
        load_yaml("a: &a [1, *a]\n", loader_class=loader)
    with pytest.raises(YamlLimitError, match="nested more than 64 levels deep"):
        load_yaml("x: " + "[" * 100 + "]" * 100, loader_class=loader)
    with pytest.raises(yaml.YAMLError):    # libyaml's scanner has its own limit at 1000
        load_yaml("x: " + "[" * 5000 + "]" * 5000, loader_class=loader)
    nested = load_yaml("x: " + "[" * 60 + "]" * 60, loader_class=loader)["x"]  # within
    for _ in range(59):
        nested = nested[0]
    assert nested == []


@pytest.mark.parametrize("loader", LOADERS, ids=lambda c: c.__name__)
def test_yaml_errors_stay_pyyamls(loader: type) -> None:
    with pytest.raises(yaml.YAMLError, match="undefined alias"):
        load_yaml("a: *nowhere\n", loader_class=loader)
    with pytest.raises(yaml.YAMLError, match="could not determine a constructor"):
        load_yaml("a: !!python/object:os.system x\n", loader_class=loader)   # safe only


def test_the_config_errors_name_the_file_and_the_limit(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    with pytest.raises(ConfigError) as info:
        load_config(bomb, env={})
    [problem] = info.value.problems
    assert problem.startswith(f"{bomb}: refused at line ")
    assert f"more than {MAX_NODES} nodes once its aliases (*name) are expanded" in problem

    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    with pytest.raises(ConfigError) as info:
        load_config(big, env={})
    assert info.value.problems == [f"{big}: the file is larger than 1 MiB (the limit for a "
                                   "config file)"]

    with pytest.raises(ConfigError) as info:
        parse_config("server: {port: " + "1" * 5000 + "}\n", env={}, source="n.yaml")
    assert info.value.problems == ["n.yaml: a value cannot be read: Exceeds the limit (4300 "
                                   "digits) for integer string conversion: value has 5000 "
                                   "digits"]


def test_a_file_just_under_the_size_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "patter.yaml"
    text = yaml.safe_dump(twilio_raw())
    path.write_text(text + "#" * (MAX_FILE_BYTES - len(text.encode()) - 1) + "\n")
    assert path.stat().st_size == MAX_FILE_BYTES
    assert load_config(path, env={}).phone_number
