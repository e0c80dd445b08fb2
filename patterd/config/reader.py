"""Typed reading of a raw YAML mapping, collecting every problem with its key path.

A :class:`Section` wraps one mapping. Each typed getter records the key as known, converts and
checks the value, and on a problem appends ``"<path>: <what was expected>"`` to the shared error
list instead of raising, so that one run reports every problem in the file. :meth:`Section.done`
then rejects the keys nobody asked for, with a "did you mean" hint.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .hints import unquoted_number_hint

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class Problems(list[str]):
    """The error list shared by every section of one file."""


def expand_env(value: Any, path: str, problems: Problems, env: Mapping[str, str]) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree.

    ``$$`` stands for a literal ``$``. An unset variable without a default is a problem.
    """
    if isinstance(value, str):
        if "$" not in value:
            return value

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            got = env.get(name)
            if got is None or (got == "" and default is not None):
                if default is not None:
                    return default
                problems.append(f"{path}: environment variable {name} is not set")
                return ""
            return got

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: expand_env(v, f"{path}.{k}" if path else str(k), problems, env)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [expand_env(v, f"{path}[{i}]", problems, env) for i, v in enumerate(value)]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Section:
    """One mapping of the config file, read key by key."""

    def __init__(self, raw: Any, path: str, problems: Problems) -> None:
        self.path = path
        self.problems = problems
        self.known: set[str] = set()
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            problems.append(f"{path or 'the file'}: expected a mapping, got {_kind(raw)}")
            raw = {}
        self.raw: dict[str, Any] = raw

    # -- helpers ---------------------------------------------------------------------------
    def key_path(self, key: str) -> str:
        """The dotted path of ``key`` inside this section."""
        return _join(self.path, key)

    def has(self, key: str) -> bool:
        """True if the file sets ``key`` (to anything but null)."""
        return self.raw.get(key) is not None

    def problem(self, key: str, message: str) -> None:
        """Record a problem about ``key``."""
        self.problems.append(f"{self.key_path(key)}: {message}")

    def _get(self, key: str) -> Any:
        self.known.add(key)
        return self.raw.get(key)

    # -- typed getters ---------------------------------------------------------------------
    def str(
        self,
        key: str,
        default: str = "",
        *,
        choices: Iterable[str] | None = None,
        pattern: re.Pattern[str] | None = None,
        expected: str = "",
    ) -> str:
        """A string (numbers are accepted and turned into their text)."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.problem(key, f"expected {expected or 'a string'}, got {_kind(value)}")
            return default
        text = value if isinstance(value, str) else str(value)
        if choices is not None:
            options = list(choices)
            if text not in options:
                self.problem(key, f"expected one of {', '.join(options)}, got {text!r}"
                             + _hint(text, options))
                return default
        if pattern is not None and text and not pattern.fullmatch(text):
            self.problem(key, f"expected {expected or pattern.pattern}, got {text!r}"
                         + unquoted_number_hint(value))
            return default
        return text

    def int(self, key: str, default: int, *, minimum: int | None = None,
            maximum: int | None = None) -> int:
        """An integer, optionally bounded; numeric strings (from ``${VAR}``) are accepted."""
        value = self._get(key)
        if value is None:
            return default
        number: int
        if isinstance(value, bool):
            self.problem(key, f"expected an integer, got {_kind(value)}")
            return default
        if isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            number = int(value)
        else:
            self.problem(key, f"expected an integer, got {_show(value)}")
            return default
        return self._bounded(key, number, minimum, maximum, default)

    def float(self, key: str, default: float, *, minimum: float | None = None,
              maximum: float | None = None) -> float:
        """A number of seconds or a ratio; numeric strings are accepted."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            self.problem(key, f"expected a number, got {_kind(value)}")
            return default
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.problem(key, f"expected a number, got {_show(value)}")
            return default
        if number != number or number in (float("inf"), float("-inf")):
            self.problem(key, f"expected a finite number, got {_show(value)}")
            return default
        return self._bounded(key, number, minimum, maximum, default)

    def bool(self, key: str, default: bool) -> bool:
        """A boolean; the strings true/false/yes/no/on/off/1/0 are accepted (from ``${VAR}``)."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("true", "yes", "on", "1"):
                return True
            if low in ("false", "no", "off", "0"):
                return False
        self.problem(key, f"expected true or false, got {_show(value)}")
        return default

    def str_map(self, key: str, *, value_pattern: re.Pattern[str] | None = None,
                expected: str = "a string") -> dict[str, str]:
        """A mapping of names to strings."""
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(key, f"expected a mapping of names to {expected}s, got {_kind(value)}")
            return {}
        out: dict[str, str] = {}
        for name, item in value.items():
            sub = _join(self.key_path(key), str(name))
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                self.problems.append(f"{sub}: expected {expected}, got {_kind(item)}")
                continue
            text = str(item)
            if value_pattern is not None and not value_pattern.fullmatch(text):
                self.problems.append(f"{sub}: expected {expected}, got {text!r}")
                continue
            out[str(name)] = text
        return out

    def section(self, key: str) -> Section:
        """A nested mapping."""
        return Section(self._get(key), self.key_path(key), self.problems)

    def list(self, key: str) -> list[Any]:
        """A raw list (items are read by the caller)."""
        value = self._get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(key, f"expected a list, got {_kind(value)}")
            return []
        return value

    def done(self, *, not_here: Mapping[str, str] | None = None) -> None:
        """Reject keys no getter asked for; ``not_here`` explains keys valid elsewhere."""
        for key in self.raw:
            name = str(key)
            if name in self.known:
                continue
            if not_here and name in not_here:
                self.problem(name, not_here[name])
                continue
            self.problem(name, "unknown key" + _hint(name, sorted(self.known)))

    def _bounded(self, key: str, number: Any, minimum: Any, maximum: Any, default: Any) -> Any:
        if minimum is not None and number < minimum:
            self.problem(key, f"expected at least {minimum}, got {number}")
            return default
        if maximum is not None and number > maximum:
            self.problem(key, f"expected at most {maximum}, got {number}")
            return default
        return number


def _hint(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return f"{type(value).__name__} {value!r}"


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)) or value is None:
        return _kind(value)
    return repr(value)


def environ() -> Mapping[str, str]:
    """The process environment (a seam for tests)."""
    return os.environ
