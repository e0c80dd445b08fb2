"""Call records ↔ table rows, JSON encoding that every database accepts, list cursors."""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .base import StoreDataError

#: The ``calls`` columns in the order rows are built.
COLUMNS: tuple[str, ...] = (
    "call_id", "carrier", "direction", "from_number", "to_number", "status", "outcome",
    "created_at", "updated_at", "ended_at", "dtmf", "cost",
    "history", "events", "transcript", "turns",
)
JSON_COLUMNS = frozenset({"cost", "history", "events", "transcript", "turns"})
SUMMARY_COLUMNS: tuple[str, ...] = (
    "call_id", "carrier", "direction", "from_number", "to_number", "status", "outcome",
    "created_at", "ended_at",
)
#: What an overview of many calls reads of each (no transcript, no history).
STATS_COLUMNS: tuple[str, ...] = (
    "call_id", "carrier", "direction", "status", "outcome", "created_at", "ended_at", "cost",
    "turns",
)
_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class CallFilter:
    """Which calls a list, an export or an overview covers: created in ``[since, until)``
    (Unix seconds), ``status`` (status *or* outcome, as ``GET /v1/calls?status``), and an exact
    ``outcome``, ``direction`` or ``carrier``. Empty fields don't filter."""

    since: float | None = None
    until: float | None = None
    status: str = ""
    outcome: str = ""
    direction: str = ""
    carrier: str = ""

    def clauses(self) -> list[tuple[str, list[Any]]]:
        """``(SQL with one "{}" per parameter, parameters)`` for each set field."""
        out: list[tuple[str, list[Any]]] = []
        if self.status:
            out.append(("(status = {} OR outcome = {})", [self.status, self.status]))
        for column in ("outcome", "direction", "carrier"):
            value = getattr(self, column)
            if value:
                out.append((f"{column} = {{}}", [value]))
        if self.since is not None:
            out.append(("created_at >= {}", [float(self.since)]))
        if self.until is not None:
            out.append(("created_at < {}", [float(self.until)]))
        return out


def _clean(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy: NUL and lone surrogates replaced, non-finite floats → None."""
    if depth > _MAX_DEPTH:
        return None
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {clean_text(str(k)): _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, depth + 1) for v in value]
    return clean_text(str(value))


def clean_text(text: str) -> str:
    """Text both databases store: no NUL characters (PostgreSQL refuses them), valid UTF-8."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def dumps(value: Any) -> str:
    """Compact JSON that SQLite and PostgreSQL ``jsonb`` both accept."""
    opts: dict[str, Any] = {"ensure_ascii": False, "allow_nan": False,
                            "separators": (",", ":"), "default": str}
    try:
        text = json.dumps(value, **opts)
        if "\\u0000" not in text:
            text.encode("utf-8")   # lone surrogates
            return text
    except (ValueError, RecursionError):   # NaN/inf, circular, surrogates (UnicodeEncodeError)
        pass
    try:
        return json.dumps(_clean(value), **opts)
    except (ValueError, RecursionError) as exc:
        raise StoreDataError(f"cannot encode as JSON: {exc}") from exc


def loads(text: Any, default: Any) -> Any:
    """Decode a JSON column (PostgreSQL may hand back text or already-decoded values)."""
    if text is None:
        return default
    if isinstance(text, (bytes, str)):
        return json.loads(text)
    return text


def _number(value: Any, name: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise StoreDataError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(out):
        raise StoreDataError(f"{name}: expected a finite number")
    return out


def _text(value: Any) -> str:
    return clean_text(value if isinstance(value, str) else ("" if value is None else str(value)))


def to_row(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """The ``calls`` row for a record shaped like the admin API's ``detail()`` (``from``/``to``
    or ``from_number``/``to_number``, ``status_history`` or ``history``), in COLUMNS order."""
    if not isinstance(record, Mapping):
        raise StoreDataError(f"a call record is a dict, not {type(record).__name__}")
    call_id = record.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise StoreDataError("call_id: required (a non-empty string)")
    now = time.time()
    transcript = record.get("transcript") or []
    dtmf = record.get("dtmf")
    if dtmf is None:
        dtmf = "".join(str(line.get("dtmf", "")) for line in transcript
                       if isinstance(line, Mapping))
    history = record.get("status_history", record.get("history")) or []
    cost = record.get("cost")
    return (
        clean_text(call_id),
        _text(record.get("carrier")),
        _text(record.get("direction") or "inbound"),
        _text(record.get("from", record.get("from_number"))),
        _text(record.get("to", record.get("to_number"))),
        _text(record.get("status") or "initiated"),
        _text(record.get("outcome")) or None,
        _number(record.get("created_at", now), "created_at"),
        _number(record.get("updated_at", now), "updated_at"),
        _number(record.get("ended_at"), "ended_at", optional=True),
        _text(dtmf),
        None if cost is None else dumps(cost),
        dumps(history),
        dumps(record.get("events") or []),
        dumps(transcript),
        dumps(record.get("turns") or []),
    )


def summary_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row (summary columns at least) as the admin API's ``summary()`` shape."""
    return {"call_id": row["call_id"], "carrier": row["carrier"],
            "direction": row["direction"], "from": row["from_number"],
            "to": row["to_number"], "status": row["status"],
            "outcome": row["outcome"] or None, "created_at": row["created_at"],
            "ended_at": row["ended_at"]}


def detail_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A full row as the admin API's ``detail()`` shape plus ``cost`` and ``updated_at``."""
    out = summary_of(row)
    out.update({
        "status_history": loads(row["history"], []),
        "transcript": loads(row["transcript"], []),
        "dtmf": row["dtmf"] or "",
        "events": loads(row["events"], []),
        "turns": loads(row["turns"], []),
        "cost": loads(row["cost"], None),
        "updated_at": row["updated_at"],
    })
    return out


def stats_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row of :data:`STATS_COLUMNS` as a dict (JSON columns decoded)."""
    return {"call_id": row["call_id"], "carrier": row["carrier"],
            "direction": row["direction"], "status": row["status"],
            "outcome": row["outcome"] or None, "created_at": row["created_at"],
            "ended_at": row["ended_at"], "cost": loads(row["cost"], None),
            "turns": loads(row["turns"], [])}


def encode_cursor(created_at: float, call_id: str) -> str:
    """The admin API's cursor: URL-safe base64 of ``"<created_at!r>|<call_id>"``."""
    return base64.urlsafe_b64encode(f"{created_at!r}|{call_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    """``(created_at, call_id)`` of a cursor; ``ValueError("cursor: malformed")`` if it isn't."""
    try:
        raw = base64.urlsafe_b64decode(cursor.encode()).decode()
        at, _, call_id = raw.partition("|")
        value = float(at)
    except (ValueError, UnicodeError, binascii.Error, AttributeError):
        raise ValueError("cursor: malformed") from None
    if not math.isfinite(value):
        raise ValueError("cursor: malformed")
    return value, call_id


def page(rows: Sequence[Any], limit: int, *, full: bool = False
         ) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``limit`` summaries (``full``: whole records) from ``limit + 1`` fetched rows
    (``sqlite3.Row`` or ``asyncpg.Record``: anything indexed by column name), and the next
    cursor."""
    out = [(detail_of if full else summary_of)(r) for r in rows[:limit]]
    if len(rows) > limit:
        last = out[-1]
        return out, encode_cursor(last["created_at"], last["call_id"])
    return out, None


def check_limit(limit: int) -> int:
    """A page size of at least 1."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError("limit: expected a positive integer")
    return limit
