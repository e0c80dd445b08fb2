"""Hints for the mistakes YAML makes easy, so a problem reads as its cause.

- A tab: PyYAML says "found character '\\t' that cannot start any token"; we say where the tab
  is and that YAML indents with spaces.
- An unquoted ``+15550001234`` is the integer 15550001234 to YAML: the problem says to quote it.
- A misspelt key or section makes later keys look missing ("required"): unknown keys, with
  their "did you mean", are listed before the problems they cause.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_PHONE_DIGITS = re.compile(r"[1-9][0-9]{6,14}")


def yaml_syntax_problem(exc: yaml.YAMLError, source: str, text: str = "") -> str:
    """One line for a YAML syntax error: where it is and, in plain words, what is wrong.
    ``text`` (the document) lets a tab be named even where the parser (libyaml) only says
    "found character that cannot start any token"."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return f"{source}: not valid YAML: {problem}"
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    if "'\\t'" in problem or "tab" in problem or _tab_at(text, mark.line, mark.column):
        return (f"{source}: {where}: a tab character; YAML indents with spaces only "
                "(replace the tab with spaces)")
    return f"{source}: not valid YAML at {where}: {problem}"


def _tab_at(text: str, line: int, column: int) -> bool:
    lines = text.splitlines()
    return 0 <= line < len(lines) and lines[line][column:column + 1] == "\t"


def unquoted_number_hint(value: Any) -> str:
    """For a value YAML read as a number where text was expected (an E.164 number, a dial
    target): how to write it so YAML keeps it as text. ``""`` for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    if isinstance(value, int) and _PHONE_DIGITS.fullmatch(str(value)):
        return (f" (YAML read an unquoted +{value} as the number {value}: quote it, "
                f"\"+{value}\")")
    return f" (YAML read it as the number {value}: quote it, \"{value}\")"


def cause_first(problems: list[str]) -> list[str]:
    """``problems`` with unknown keys (misspellings, and their "did you mean") first: a
    misspelt section is why its keys are then reported as required."""
    unknown = [p for p in problems if ": unknown key" in p]
    return unknown + [p for p in problems if ": unknown key" not in p]


__all__ = ["cause_first", "unquoted_number_hint", "yaml_syntax_problem"]
