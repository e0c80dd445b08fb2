"""Remembering recent delivery keys so a redelivered webhook is processed once."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class Deduper:
    """A bounded, time-limited set of keys already seen."""

    __slots__ = ("_seen", "_max", "_ttl", "_clock")

    def __init__(self, max_entries: int = 200_000, ttl: float = 6 * 3600,
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
