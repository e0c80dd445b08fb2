"""Refusing credentials that cannot be what the operator meant: blank or whitespace-laden
keys, and admin tokens that are placeholders (the shipped examples' included) or too weak to
guard an API that places phone calls.

An admin token must be at least ``MIN_ADMIN_TOKEN`` characters of visible ASCII, with no
placeholder word in it (``replace``, ``changeme``, ``example``, ``random``, …), at least
``MIN_DISTINCT`` different characters, not one short piece repeated, and not mostly a run like
``abcdef…`` or ``123456…``. ``openssl rand -hex 32`` gives one.
"""

from __future__ import annotations

import re

MIN_ADMIN_TOKEN = 24
MIN_DISTINCT = 10
GENERATE_HINT = "generate one with `openssl rand -hex 32`"
# Words of placeholder text (compared without case, separators dropped): the shipped
# examples' "replace-with-a-long-random-token" / "REPLACE_ME_long_random_admin_token", and
# the usual suspects. A random token never spells any of them.
PLACEHOLDER_WORDS = ("replace", "changeme", "placeholder", "example", "random", "yourtoken",
                     "yoursecret", "yourkey", "insert", "fillin", "fixme", "dummy", "sample",
                     "password", "passwd", "secret", "letmein", "qwerty", "redacted",
                     "default", "tokenhere")
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")


def credential_problem(value: str) -> str:
    """Why a key or token that is set cannot be used (``""`` when it can): blank, or with
    whitespace in it (a copy-paste accident that would fail authentication later)."""
    if not value.strip():
        return "is blank (only whitespace)"
    if any(c.isspace() for c in value):
        return "contains whitespace (a copy-paste accident?)"
    return ""


def admin_token_problem(token: str) -> str:
    """Why ``token`` may not guard the admin API (``""`` when it may)."""
    problem = credential_problem(token)
    if problem:
        return f"{problem}; {GENERATE_HINT}"
    if not _VISIBLE_ASCII.fullmatch(token):
        return f"expected visible ASCII characters only; {GENERATE_HINT}"
    flat = re.sub(r"[-_.\s]", "", token.lower())
    for word in PLACEHOLDER_WORDS:
        if word in flat:
            return (f"looks like a placeholder (contains {word!r}), not a secret; "
                    f"{GENERATE_HINT}")
    if len(token) < MIN_ADMIN_TOKEN:
        return f"expected at least {MIN_ADMIN_TOKEN} characters; {GENERATE_HINT}"
    if len(set(token)) < MIN_DISTINCT:
        return (f"too guessable: fewer than {MIN_DISTINCT} different characters; "
                f"{GENERATE_HINT}")
    if _repeats(token):
        return f"too guessable: one short piece repeated; {GENERATE_HINT}"
    if _longest_run(token) * 2 >= len(token):
        return f"too guessable: mostly a run like abcd… or 1234…; {GENERATE_HINT}"
    return ""


def _repeats(text: str) -> bool:
    """Whether ``text`` is a shorter piece repeated (the last copy may be cut short)."""
    n = len(text)
    return any(text == (text[:k] * (n // k + 1))[:n] for k in range(1, n // 2 + 1))


def _longest_run(text: str) -> int:
    """The longest stretch of characters each one code point above (or below) the last."""
    best = run = 1
    step = 0
    for a, b in zip(text, text[1:]):
        d = ord(b) - ord(a)
        if d in (1, -1) and (run == 1 or d == step):
            run += 1
            step = d
        else:
            run = 2 if d in (1, -1) else 1
            step = d if d in (1, -1) else 0
        best = max(best, run)
    return best


__all__ = ["admin_token_problem", "credential_problem", "GENERATE_HINT", "MIN_ADMIN_TOKEN"]
