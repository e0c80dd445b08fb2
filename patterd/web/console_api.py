"""The admin API's routes for the console (and any other program): filters, export, overview
figures and local recordings. Same bearer token as the rest of ``/v1``.

- ``GET /v1/export?format=csv|json&…filters`` — every call the filters select, newest first,
  streamed (CSV: one row per call; JSON: ``{"calls": [whole records]}``).
- ``GET /v1/stats?since&until&buckets&…filters`` — calls and outcomes over time, latency
  percentiles per stage, cost by component (the newest ``MAX_STATS_CALLS`` calls at most).
- ``GET /v1/calls/{id}/recording`` — the call's local WAV (``recording.local_dir``).

Filters (also on ``GET /v1/calls``): ``since``/``until`` (Unix seconds or ISO 8601, on the
call's creation), ``status`` (status or outcome), ``outcome``, ``direction``, ``carrier``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

from ..call.recorder import wav_name
from ..gateway import Gateway
from ..ops.cost import COMPONENTS
from ..ops.trace import STAGES
from ..store import StoreError
from ..store.records import CallFilter
from .auth import bearer_guard

EXPORT_PAGE = 200
MAX_STATS_CALLS = 20_000
MAX_BUCKETS = 200
DEFAULT_SPAN = 86_400.0
CSV_COLUMNS = ("call_id", "carrier", "direction", "from", "to", "status", "outcome",
               "created_at", "ended_at", "duration_s", "cost_total_usd", "cost_carrier_usd",
               "cost_stt_usd", "cost_llm_usd", "cost_tts_usd", "dtmf", "turns",
               "response_median_s", "transcript_lines")
_FILTER_TEXT = ("status", "outcome", "direction", "carrier")
_PLAIN_NUMBER = frozenset("+-0123456789 .")


class BadQuery(ValueError):
    """A query parameter that cannot be used (answered 400)."""


def _time(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise BadQuery(f"{name}: expected Unix seconds or an ISO 8601 time") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    if not math.isfinite(number):
        raise BadQuery(f"{name}: expected a finite number")
    return number


def parse_filter(query: Mapping[str, str]) -> CallFilter:
    """The call filter of a query string; :class:`BadQuery` for a bad value."""
    texts = {}
    for key in _FILTER_TEXT:
        value = query.get(key, "")
        if len(value) > 64:
            raise BadQuery(f"{key}: at most 64 characters")
        texts[key] = value
    since = _time(query["since"], "since") if query.get("since") else None
    until = _time(query["until"], "until") if query.get("until") else None
    return CallFilter(since=since, until=until, **texts)


def _iso(at: Any) -> str:
    if not isinstance(at, (int, float)):
        return ""
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")


def safe_cell(value: Any) -> str:
    """A CSV cell a spreadsheet will not run: text starting like a formula (``=``, ``@``, a
    sign not followed by a plain number, tab, CR) gets a leading apostrophe."""
    text = "" if value is None else str(value)
    if text and (text[0] in "=@\t\r" or (text[0] in "+-" and not set(text) <= _PLAIN_NUMBER)):
        return "'" + text
    return text


def csv_row(rec: Mapping[str, Any]) -> list[str]:
    """One call as a CSV row (:data:`CSV_COLUMNS`)."""
    cost = rec.get("cost") if isinstance(rec.get("cost"), dict) else {}
    created, ended = rec.get("created_at"), rec.get("ended_at")
    duration = round(ended - created, 3) if isinstance(created, (int, float)) and \
        isinstance(ended, (int, float)) else ""
    responses = sorted(t["response"] for t in rec.get("turns") or []
                       if isinstance(t, dict) and isinstance(t.get("response"), (int, float)))
    median = responses[len(responses) // 2] if responses else ""
    values = [rec.get("call_id"), rec.get("carrier"), rec.get("direction"), rec.get("from"),
              rec.get("to"), rec.get("status"), rec.get("outcome") or "", _iso(created),
              _iso(ended), duration, cost.get("total", ""), cost.get("carrier", ""),
              cost.get("stt", ""), cost.get("llm", ""), cost.get("tts", ""),
              rec.get("dtmf", ""), len(rec.get("turns") or []), median,
              len(rec.get("transcript") or [])]
    return [safe_cell(v) for v in values]


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``values``, or None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return round(ordered[rank - 1], 4)


def overview(calls: list[dict[str, Any]], since: float, until: float, buckets: int
             ) -> dict[str, Any]:
    """Figures over ``calls`` (:func:`Store.call_stats` rows): per time bucket the calls and
    their outcomes, latency percentiles per stage, cost by component, calls by carrier and
    direction."""
    width = max(1e-9, (until - since) / buckets)
    slots = [{"start": round(since + i * width, 3), "end": round(since + (i + 1) * width, 3),
              "total": 0, "outcomes": {}} for i in range(buckets)]
    outcomes: dict[str, int] = {}
    carriers: dict[str, int] = {}
    directions: dict[str, int] = {}
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    cost = {c: 0.0 for c in (*COMPONENTS, "total")}
    for call in calls:
        outcome = call.get("outcome") or ("live" if call.get("ended_at") is None else "unknown")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        carriers[call["carrier"]] = carriers.get(call["carrier"], 0) + 1
        directions[call["direction"]] = directions.get(call["direction"], 0) + 1
        index = int((call["created_at"] - since) // width)
        if 0 <= index < buckets:
            slot = slots[index]
            slot["total"] += 1
            slot["outcomes"][outcome] = slot["outcomes"].get(outcome, 0) + 1
        for turn in call.get("turns") or []:
            if isinstance(turn, dict):
                for stage, values in stages.items():
                    value = turn.get(stage)
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        values.append(float(value))
        priced = call.get("cost")
        if isinstance(priced, dict):
            for key in cost:
                value = priced.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    cost[key] += value
    return {
        "since": since, "until": until, "calls": len(calls), "buckets": slots,
        "outcomes": outcomes, "carriers": carriers, "directions": directions,
        "latency": {stage: {"p50": percentile(v, 50), "p95": percentile(v, 95), "n": len(v)}
                    for stage, v in stages.items()},
        "cost": {k: round(v, 6) for k, v in cost.items()},
    }


def console_api_routes(gw: Gateway) -> list[web.RouteDef]:
    """The routes, or none when no admin token is configured."""
    token = gw.config.admin.token.encode()
    if not token:
        return []
    guarded = bearer_guard(token)

    def bad(message: str, status: int = 400) -> web.Response:
        return web.json_response({"error": message}, status=status)

    async def export(request: web.Request) -> web.StreamResponse:
        fmt = request.query.get("format", "json")
        if fmt not in ("csv", "json"):
            return bad("format: expected csv or json")
        try:
            where = parse_filter(request.query)
        except BadQuery as exc:
            return bad(str(exc))
        store = gw.store_writer.store
        await gw.store_writer.flush(1.0)
        try:    # the first page before answering: a store that is away is a 503, not a cut
            calls, cursor = await store.list_calls(EXPORT_PAGE, where=where, full=True)
        except StoreError as exc:
            return bad(f"the call store is unavailable: {exc}", 503)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        resp = web.StreamResponse(headers={
            "Content-Type": "text/csv; charset=utf-8" if fmt == "csv"
            else "application/json; charset=utf-8",
            "Content-Disposition": f'attachment; filename="patterd-calls-{stamp}.{fmt}"',
            "Cache-Control": "no-store"})
        await resp.prepare(request)
        buffer = io.StringIO()
        out = csv.writer(buffer, lineterminator="\r\n")
        if fmt == "csv":
            out.writerow(CSV_COLUMNS)
        else:
            buffer.write('{"calls":[')
        first = True
        while True:
            for rec in calls:
                if fmt == "csv":
                    out.writerow(csv_row(rec))
                else:
                    buffer.write(("" if first else ",") + json.dumps(rec, default=str))
                first = False
            await resp.write(buffer.getvalue().encode())
            buffer.seek(0)
            buffer.truncate()
            if not cursor:
                break
            try:
                calls, cursor = await store.list_calls(EXPORT_PAGE, cursor=cursor,
                                                       where=where, full=True)
            except StoreError:
                break     # the answer is already under way: it ends short (JSON: invalid)
        if fmt == "json":
            await resp.write(b"]}")
        await resp.write_eof()
        return resp

    async def stats(request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            where = parse_filter(q)
            buckets = int(q.get("buckets", "24"))
        except BadQuery as exc:
            return bad(str(exc))
        except ValueError:
            return bad("buckets: expected an integer")
        if not 1 <= buckets <= MAX_BUCKETS:
            return bad(f"buckets: expected 1 to {MAX_BUCKETS}")
        until = where.until if where.until is not None else time.time()
        since = where.since if where.since is not None else until - DEFAULT_SPAN
        if since >= until:
            return bad("since: must be before until")
        where = CallFilter(since=since, until=until, status=where.status,
                           outcome=where.outcome, direction=where.direction,
                           carrier=where.carrier)
        await gw.store_writer.flush(1.0)
        try:
            calls = await gw.store_writer.store.call_stats(where, MAX_STATS_CALLS + 1)
        except StoreError as exc:
            return bad(f"the call store is unavailable: {exc}", 503)
        out = overview(calls[:MAX_STATS_CALLS], since, until, buckets)
        out["truncated"] = len(calls) > MAX_STATS_CALLS
        return web.json_response(out, headers={"Cache-Control": "no-store"})

    async def recording(request: web.Request) -> web.StreamResponse:
        call_id = request.match_info["call_id"]
        local = gw.config.recording.local_dir
        if not local:
            return bad("no local recordings (recording.local_dir is not set)", 404)
        rec = gw.registry.get(call_id)
        events: list[Any] = list(rec.events) if rec is not None else []
        if rec is None:
            try:
                stored = await gw.store_writer.store.get_call(call_id)
            except StoreError as exc:
                return bad(f"the call store is unavailable: {exc}", 503)
            events = list((stored or {}).get("events") or [])
        folder = Path(local).expanduser().resolve()
        expected = folder / wav_name(call_id)
        for event in events:
            if not (isinstance(event, dict) and event.get("type") == "recording"
                    and event.get("source") == "local"):
                continue
            # The file is the one this daemon names for the call, in its folder: a path
            # in a record never leads anywhere else.
            path = Path(str(event.get("path", ""))).expanduser().resolve()
            if path == expected and path.is_file():
                return web.FileResponse(path, headers={
                    "Content-Type": "audio/wav", "Cache-Control": "no-store",
                    "Content-Disposition": f'inline; filename="{expected.name}"'})
        return bad("no local recording of this call", 404)

    return [web.get("/v1/export", guarded(export)), web.get("/v1/stats", guarded(stats)),
            web.get("/v1/calls/{call_id}/recording", guarded(recording))]


__all__ = ["CSV_COLUMNS", "BadQuery", "console_api_routes", "csv_row", "overview",
           "parse_filter", "percentile", "safe_cell"]
