#!/usr/bin/env python3
"""The console's page weight and time to first render, in Debian's Chromium (headless,
Playwright), against a daemon on 127.0.0.1 with a few stored calls.

Weight: the bytes of every response a cold load of ``/console`` takes (the HTML, the
stylesheet, the modules, the first API answers), and what gzip would make of the static part.
Time: from navigation start to the first contentful paint, and to the live page showing its
data (``console-rendered`` mark), over ``--loads`` cold loads (a fresh browser profile each;
the token already in the tab, as after signing in), median and max.

    .venv/bin/python benchmarks/console_page.py [--loads 7] [--page live|calls|overview]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TOKEN = "console-benchmark-token-0123456789"


async def run(loads: int, page_name: str) -> dict[str, object]:
    from aiohttp.test_utils import TestClient, TestServer

    from patterd.app import build_app
    from patterd.gateway import GATEWAY
    from patterd.patter import carrier_for
    from patterd.web.console import load_assets
    from tests.conftest import config, twilio_raw
    from tests.support.browser import chromium
    from tests.support.stub_backends import stub_backends

    cfg = config(twilio_raw(admin={"token": TOKEN}))
    app = build_app(cfg, carrier_for(cfg.carrier), backends=stub_backends(cfg))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    now = time.time()
    await app[GATEWAY].store_writer.store.upsert_calls([
        {"call_id": f"CA{i:032x}", "carrier": "twilio", "direction": "inbound",
         "from": "+15557654321", "to": "+15550001234", "status": "completed",
         "outcome": "completed", "created_at": now - 60 * i, "ended_at": now - 60 * i + 40,
         "turns": [{"response": 0.6, "endpointing": 0.5}], "cost": {"total": 0.01}}
        for i in range(50)])
    base = str(client.make_url("")).rstrip("/")
    fcp: list[float] = []
    ready: list[float] = []
    weight = 0
    requests = 0
    try:
        async with chromium() as browser:
            for _ in range(loads):
                # a fresh profile each time (nothing cached), the token already in the tab
                context = await browser.new_context()
                await context.add_init_script(
                    f"sessionStorage.setItem('patterd.console.token', {json.dumps(TOKEN)})")
                page = await context.new_page()
                sizes: list[int] = []

                async def on_finished(request) -> None:   # type: ignore[no-untyped-def]
                    sizes.append((await request.sizes())["responseBodySize"])

                # (the event stream never finishes: it is not counted)
                page.on("requestfinished", lambda r: asyncio.ensure_future(on_finished(r)))
                await page.goto(f"{base}/console#/{page_name}")
                await page.wait_for_function(
                    "() => performance.getEntriesByName('console-rendered').length > 0")
                await page.wait_for_timeout(300)
                marks = await page.evaluate("""() => ({
                    fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime,
                    ready: performance.getEntriesByName('console-rendered')[0].startTime})""")
                fcp.append(marks["fcp"])
                ready.append(marks["ready"])
                weight, requests = sum(sizes), len(sizes)
                await context.close()
    finally:
        await client.close()
    assets = load_assets()
    static = sum(len(a.body) for a in assets.values())
    static_gz = sum(len(gzip.compress(a.body, 9)) for a in assets.values())
    return {"page": page_name, "loads": loads, "requests": requests, "bytes": weight,
            "static_bytes": static, "static_gzip_bytes": static_gz, "files": len(assets),
            "fcp_ms": {"median": round(statistics.median(fcp), 1), "max": round(max(fcp), 1)},
            "rendered_ms": {"median": round(statistics.median(ready), 1),
                            "max": round(max(ready), 1)}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loads", type=int, default=7)
    p.add_argument("--page", default="live", choices=("live", "calls", "overview"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    report = asyncio.run(run(args.loads, args.page))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"console /console#/{report['page']}: {report['requests']} requests, "
              f"{report['bytes']} bytes (static files {report['static_bytes']} bytes in "
              f"{report['files']} files, {report['static_gzip_bytes']} gzipped); first "
              f"contentful paint median {report['fcp_ms']['median']} ms (max "
              f"{report['fcp_ms']['max']}), data shown median "
              f"{report['rendered_ms']['median']} ms (max {report['rendered_ms']['max']}) "
              f"over {report['loads']} cold loads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
