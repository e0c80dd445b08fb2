"""Gathering the caller's key presses into one answer (docs/configuration.md,
``llm.rules[]``: a rule wins when "its digits the caller pressed" — ``dtmf: "*9"`` as well
as ``dtmf: "1"``).

Carriers report one key at a time. :class:`Keypad` collects them and says when the agent should
answer, and with which digits:

- at once when no rule's sequence is longer than the digits so far and starts with them: a
  complete match ("1" of a one-key menu: no added latency) or a dead end ("*5" when only "*9"
  exists: the agent sees every digit pressed and answers once, not once per key);
- while a longer sequence may still follow, after the key that settles it, or
  ``INTER_DIGIT_TIMEOUT`` seconds after the last key; ``#`` ends the entry early when no rule
  needs it (and is dropped when the digits before it are a rule's sequence: "1#" is rule "1").

Without DTMF rules (a cloud LLM, the webhook agent) every key answers at once, as before; the
session then joins keys pressed while the model is still thinking about the previous ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from ..config.model import BackendConfig

INTER_DIGIT_TIMEOUT = 2.0   # seconds; read at each key press, so tests may shorten it
MAX_DIGITS = 32             # an entry this long is answered whatever the rules say
TERMINATOR = "#"


def dtmf_grammar(llm: BackendConfig) -> frozenset[str]:
    """The ``dtmf`` sequences of every ``rules`` provider in the LLM chain (upper-cased, as
    the rules agent compares them)."""
    return frozenset(rule.dtmf.upper() for cfg in llm.chain if cfg.provider == "rules"
                     for rule in cfg.rules if rule.dtmf)


class Keypad:
    """One call's pending key presses.

    :meth:`press` returns the digits to answer at once, or None while more may follow; then
    ``on_timeout(digits)`` is called if no key comes within ``INTER_DIGIT_TIMEOUT``."""

    def __init__(self, sequences: Iterable[str], on_timeout: Callable[[str], None]) -> None:
        self.sequences = frozenset(s.upper() for s in sequences if s)
        self._on_timeout = on_timeout
        self._digits = ""
        self._timer: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> str:
        """The digits pressed and not yet answered."""
        return self._digits

    def press(self, digit: str) -> str | None:
        """One key: the digits to answer now, or None while a longer rule may still match."""
        self._cancel_timer()
        before = self._digits
        digits = before + digit.upper()
        if digit == TERMINATOR and before in self.sequences \
                and not any(s.startswith(digits) for s in self.sequences):
            self._digits = ""
            return before
        self._digits = digits
        if len(digits) >= MAX_DIGITS or not self._continues(digits):
            return self.take()
        self._timer = asyncio.get_running_loop().call_later(INTER_DIGIT_TIMEOUT, self._expire)
        return None

    def restore(self, digits: str) -> None:
        """Keys pressed before the call moved here (a hand-off): pending again, with a fresh
        inter-digit timer."""
        self._cancel_timer()
        self._digits = digits.upper()[:MAX_DIGITS]
        if self._digits:
            self._timer = asyncio.get_running_loop().call_later(INTER_DIGIT_TIMEOUT,
                                                                self._expire)

    def take(self) -> str:
        """The pending digits (maybe ``""``), which are then forgotten."""
        self._cancel_timer()
        digits, self._digits = self._digits, ""
        return digits

    def close(self) -> None:
        """The call is over: no answer is due any more."""
        self._cancel_timer()
        self._digits = ""

    def _continues(self, digits: str) -> bool:
        """Some rule's sequence is longer than ``digits`` and starts with them."""
        return any(len(s) > len(digits) and s.startswith(digits) for s in self.sequences)

    def _expire(self) -> None:
        self._timer = None
        digits = self.take()
        if digits:
            self._on_timeout(digits)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


__all__ = ["INTER_DIGIT_TIMEOUT", "Keypad", "dtmf_grammar"]
