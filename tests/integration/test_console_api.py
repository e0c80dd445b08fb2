"""The console's routes without a browser: the page and its headers, 401 on every API and
event route, list filters, exports, the overview's figures and local recordings."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from patterd.call.recorder import wav_name
from patterd.web.console import CSP, load_assets
from patterd.web.console_api import csv_row, overview, percentile, safe_cell
from tests.conftest import config, gateway_of, twilio_raw

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = time.time()


def cfg(**extra: Any) -> Any:
    return config(twilio_raw(admin={"token": TOKEN}, **extra))


def record(n: int, **over: Any) -> dict[str, Any]:
    """A stored call ``n`` minutes ago."""
    created = NOW - 60 * n
    base = {"call_id": f"CA{n:032d}", "carrier": "twilio", "direction": "inbound",
            "from": "+15557654321", "to": "+15550001234", "status": "completed",
            "outcome": "completed", "created_at": created, "ended_at": created + 30,
            "transcript": [{"role": "agent", "text": "Hi", "at": created + 1}],
            "turns": [{"response": 0.4 + n / 100, "stt": 0.1, "endpointing": 0.2}],
            "cost": {"carrier": 0.0085, "stt": 0.001, "llm": 0.0, "tts": 0.002,
                     "total": 0.0115, "currency": "USD"}}
    base.update(over)
    return base


async def stored(client: Any, *records: dict[str, Any]) -> None:
    await gateway_of(client).store_writer.store.upsert_calls(list(records))


async def test_the_page_loads_with_strict_headers_and_the_api_needs_the_token(
        daemon: Any) -> None:
    client = await daemon(cfg())
    resp = await client.get("/console")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")
    assert resp.headers["Content-Security-Policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    html = await resp.text()
    assert "<script type=\"module\" src=\"/console/static/app.js\">" in html
    assert "style=" not in html and "onclick" not in html
    js = await client.get("/console/static/app.js")
    assert js.headers["Content-Type"].startswith("text/javascript")
    assert js.headers["Content-Encoding"] == "gzip" and "import" in await js.text()
    plain = await client.get("/console/static/app.js", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and await plain.text() == await js.text()
    assert js.headers["Content-Security-Policy"] == CSP
    again = await client.get("/console/static/app.js", headers={"If-None-Match": js.headers["ETag"]})
    assert again.status == 304
    for bad in ("/console/static/nope.js", "/console/static/..%2Fapi.py",
                "/console/static/%2E%2E%2F__init__.py"):
        assert (await client.get(bad)).status == 404, bad
    for path in ("/v1/live", "/v1/events", "/v1/export?format=csv", "/v1/stats",
                 "/v1/calls?since=0", "/v1/calls/CA1/recording", "/v1/calls/CA1"):
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
            got = await client.get(path, headers=headers)
            assert got.status == 401, (path, headers)
    no_token = await daemon(config(twilio_raw()))
    assert (await no_token.get("/console")).status == 404


def test_every_asset_is_used_and_nothing_inline() -> None:
    assets = load_assets()
    html = assets["index.html"].body.decode()
    scripts = "".join(a.body.decode() for n, a in assets.items() if n.endswith(".js"))
    for name in assets:
        if name != "index.html":
            assert name in html or f"./{name}" in scripts or f"/{name}" in scripts, name
    for name, asset in assets.items():
        text = asset.body.decode()
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, name
        assert "eval(" not in text and "new Function" not in text, name
        assert "document.write" not in text, name


async def test_list_filters_select_by_time_outcome_direction_and_carrier(daemon: Any) -> None:
    client = await daemon(cfg())
    await stored(client, record(1), record(2, outcome="failed"),
                 record(3, direction="outbound"), record(4, carrier="browser"),
                 record(90))

    async def ids(**query: Any) -> list[str]:
        resp = await client.get("/v1/calls", headers=AUTH, params={k: str(v) for k, v in
                                                                     query.items()})
        assert resp.status == 200, await resp.text()
        return [c["call_id"][-2:] for c in (await resp.json())["calls"]]

    assert await ids() == ["01", "02", "03", "04", "90"]
    assert await ids(outcome="failed") == ["02"]
    assert await ids(direction="outbound") == ["03"]
    assert await ids(carrier="browser") == ["04"]
    assert await ids(since=NOW - 60 * 10) == ["01", "02", "03", "04"]
    assert await ids(since=NOW - 60 * 10, until=NOW - 60 * 2.5) == ["03", "04"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 60 * 10))
    assert await ids(since=iso, carrier="twilio", outcome="completed") == ["01", "03"]
    page = await (await client.get("/v1/calls", headers=AUTH,
                                   params={"limit": "2", "since": str(NOW - 600)})).json()
    rest = await (await client.get("/v1/calls", headers=AUTH, params={
        "limit": "2", "since": str(NOW - 600), "cursor": page["next_cursor"]})).json()
    assert [c["call_id"][-2:] for c in page["calls"] + rest["calls"]] == ["01", "02", "03", "04"]
    for bad in ({"since": "yesterday"}, {"until": "nan"}, {"outcome": "x" * 65}):
        resp = await client.get("/v1/calls", headers=AUTH, params=bad)
        assert resp.status == 400, bad


async def test_exports_stream_every_selected_call_as_csv_or_json(daemon: Any) -> None:
    client = await daemon(cfg())
    many = [record(i) for i in range(1, 451)]
    many[0]["from"] = "=HYPERLINK(\"http://evil\")"
    await stored(client, *many)
    resp = await client.get("/v1/export", headers=AUTH, params={"format": "csv"})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
    assert resp.headers["Content-Disposition"].startswith('attachment; filename="patterd-calls-')
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert len(rows) == 450 and rows[0]["call_id"] == many[0]["call_id"]
    assert rows[0]["from"].startswith("'=") and rows[1]["from"] == "+15557654321"
    assert rows[1]["duration_s"] == "30.0" and rows[1]["cost_total_usd"] == "0.0115"
    assert rows[1]["created_at"].endswith("+00:00")
    resp = await client.get("/v1/export", headers=AUTH, params={"format": "json",
                                                               "since": str(NOW - 60 * 10.5)})
    doc = json.loads(await resp.text())
    assert [c["call_id"] for c in doc["calls"]] == [r["call_id"] for r in many[:10]]
    assert doc["calls"][0]["transcript"][0]["text"] == "Hi"
    assert (await client.get("/v1/export", headers=AUTH, params={"format": "xml"})).status == 400


def test_csv_cells_never_start_like_a_formula() -> None:
    assert safe_cell("=1+1") == "'=1+1" and safe_cell("@SUM(A1)") == "'@SUM(A1)"
    assert safe_cell("-2+3") == "-2+3" and safe_cell("+15550001234") == "+15550001234"
    assert safe_cell("+cmd|' /C calc'!A0") == "'+cmd|' /C calc'!A0"
    assert safe_cell("\tx") == "'\tx" and safe_cell(None) == ""
    row = csv_row({"call_id": "CA1", "turns": [{"response": 0.5}, {"response": 0.1},
                                               {"response": 0.3}]})
    assert row[17] == "0.3"


async def test_stats_count_outcomes_per_bucket_latency_percentiles_and_cost(daemon: Any) -> None:
    client = await daemon(cfg())
    await stored(client, record(1), record(2, outcome="failed"), record(3), record(200))
    resp = await client.get("/v1/stats", headers=AUTH, params={
        "since": str(NOW - 600), "until": str(NOW), "buckets": "10"})
    st = await resp.json()
    assert st["calls"] == 3 and st["outcomes"] == {"completed": 2, "failed": 1}
    assert sum(b["total"] for b in st["buckets"]) == 3 and len(st["buckets"]) == 10
    assert st["buckets"][-1]["outcomes"] == {"completed": 1}          # a minute ago
    assert st["latency"]["response"] == {"p50": 0.42, "p95": 0.43, "n": 3}
    assert st["latency"]["llm_first_token"] == {"p50": None, "p95": None, "n": 0}
    assert st["cost"]["total"] == pytest.approx(3 * 0.0115)
    assert st["carriers"] == {"twilio": 3} and st["truncated"] is False
    default = await (await client.get("/v1/stats", headers=AUTH)).json()
    assert default["calls"] == 4                                       # the last 24 hours
    for bad in ({"buckets": "0"}, {"buckets": "x"}, {"since": "5", "until": "4"}):
        assert (await client.get("/v1/stats", headers=AUTH, params=bad)).status == 400


def test_percentiles_and_overview_of_nothing() -> None:
    assert percentile([], 50) is None and percentile([3.0], 95) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    empty = overview([], 0.0, 10.0, 2)
    assert empty["calls"] == 0 and [b["total"] for b in empty["buckets"]] == [0, 0]


async def test_a_local_recording_is_served_only_from_its_own_folder(daemon: Any,
                                                                    tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    folder.mkdir()
    client = await daemon(cfg(recording={"local_dir": str(folder)}))
    good = record(1)
    (folder / wav_name(good["call_id"])).write_bytes(b"RIFF....WAVEfmt fake")
    good["events"] = [{"type": "recording", "source": "local",
                       "path": str(folder / wav_name(good["call_id"])), "duration": 1.0}]
    secret = tmp_path / "secret.txt"
    secret.write_text("not a recording")
    other = record(2, events=[{"type": "recording", "source": "local", "path": str(secret)}])
    sneaky = record(3, events=[{"type": "recording", "source": "local",
                                "path": str(folder / wav_name(good["call_id"]))}])
    await stored(client, good, other, sneaky)
    resp = await client.get(f"/v1/calls/{good['call_id']}/recording", headers=AUTH)
    assert resp.status == 200 and resp.headers["Content-Type"] == "audio/wav"
    assert await resp.read() == b"RIFF....WAVEfmt fake"
    for rec in (other, sneaky, record(4)):   # outside the folder, another call's file, none
        resp = await client.get(f"/v1/calls/{rec['call_id']}/recording", headers=AUTH)
        assert resp.status == 404, rec["call_id"]
    bare = await daemon(cfg())
    assert (await bare.get("/v1/calls/CA1/recording", headers=AUTH)).status == 404
