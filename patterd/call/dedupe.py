"""Remembering recent delivery keys so a redelivered webhook is processed once.

Carriers redeliver within minutes (Twilio within 15 s of the first try, Telnyx within about a
minute; see :mod:`patterd.web.backpressure`), so a key is kept ``TTL`` seconds (10 minutes)
and at most ``MAX_ENTRIES`` keys are kept (the oldest go first): memory stays bounded under
any rate of webhooks. What must be refused for longer (a Telnyx event within its signature's
replay window, a spent stream token) is remembered in the store as well
(``Gateway.first_delivery(durable_for=…)``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

TTL = 600.0             # seconds a key is remembered
MAX_ENTRIES = 100_000   # keys remembered at most (~25 MB at worst)


class Deduper:
    """A bounded, time-limited set of keys already seen."""

    __slots__ = ("_seen", "_max", "_ttl", "_clock")

    def __init__(self, max_entries: int = MAX_ENTRIES, ttl: float = TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._seen: OrderedDict[Hashable, float] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock

    def first_time(self, key: Hashable) -> bool:
        """True the first time ``key`` is offered (within the TTL), False on a repeat."""
        now = self._clock()
        seen = self._seen
        while seen:  # expire from the old end
            oldest, at = next(iter(seen.items()))
            if now - at <= self._ttl and len(seen) < self._max:
                break
            del seen[oldest]
        if key in seen:
            return False
        seen[key] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)
