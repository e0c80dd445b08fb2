"""Both sides of a call, as heard."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Line:
    """One turn: who spoke, what, and whether the agent was cut off."""

    role: str                 # "caller" | "agent"
    text: str
    at: float = field(default_factory=time.time)
    dtmf: str = ""
    interrupted: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out: dict[str, Any] = {"role": self.role, "text": self.text, "at": self.at}
        if self.dtmf:
            out["dtmf"] = self.dtmf
        if self.interrupted:
            out["interrupted"] = True
        return out


def heard_part(text: str, heard: float, total: float) -> str:
    """The words of ``text`` the caller heard, when ``heard`` of ``total`` seconds played."""
    words = text.split()
    if total <= 0 or heard >= total:
        return text
    keep = int(len(words) * max(0.0, heard) / total)
    return " ".join(words[:keep])
