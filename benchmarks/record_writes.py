"""How long a change to a live call's record takes to reach the store (what a crash can lose).

Since records are written as calls go (a line, a reply starting or settling, a turn), the
store writer sees a steady stream of snapshots from every live call. This drives a real
``StoreWriter`` over a real SQLite file (or PostgreSQL with ``--store``) with ``--calls``
live calls, each changing its record every ``--every`` seconds on average (jittered), with
transcripts growing as in a real call, and reports, for every change, the time until the
snapshot carrying it was stored: p50, p99 and max, the snapshots submitted and written per
second, and the event loop's share of the time spent encoding. Exit status 1 when the p99 is
above ``--max-p99`` seconds (the bound a crash's loss is held to).

    .venv/bin/python benchmarks/record_writes.py                       # 400 calls, 30 s
    .venv/bin/python benchmarks/record_writes.py --calls 1000 --every 1.0
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patterd.call.records import snapshot  # noqa: E402
from patterd.call.registry import CallRecord  # noqa: E402
from patterd.store import StoreWriter, open_store  # noqa: E402

WORDS = ("thanks for calling example company how can I help you today we are open from nine "
         "to five on weekdays and ten to two on saturdays").split()


class Timed:
    """Wraps the store: when a batch lands, each call's pending changes are measured."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.pending: dict[str, list[float]] = {}     # call id → change times not yet stored
        self.latencies: list[float] = []
        self.written = 0

    def changed(self, call_id: str) -> None:
        self.pending.setdefault(call_id, []).append(time.monotonic())

    async def upsert_calls(self, records: list[dict[str, Any]], writer: str | None = None
                           ) -> None:
        taken = {r["call_id"]: r["_changes"] for r in records}
        await self.store.upsert_calls(records, writer)
        now = time.monotonic()
        for call_id, count in taken.items():
            times = self.pending.get(call_id, [])
            done, self.pending[call_id] = times[:count], times[count:]
            self.latencies.extend(now - t for t in done)
        self.written += len(records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def one_call(n: int, writer: StoreWriter, timed: Timed, every: float, until: float,
                   encode: list[float]) -> None:
    rec = CallRecord(call_id=f"CA{n:032x}", carrier="twilio", status="in-progress")
    rng = random.Random(n)
    count = 0
    await asyncio.sleep(rng.uniform(0, every))
    while time.monotonic() < until:
        role = "caller" if len(rec.transcript) % 2 else "agent"
        rec.transcript.append({"role": role, "at": time.time(),
                               "text": " ".join(rng.choices(WORDS, k=rng.randint(3, 16)))})
        if role == "agent":
            rec.turns.append({"response": round(rng.uniform(0.3, 0.9), 4)})
        if len(rec.transcript) > 60:                 # a call ends, a new one begins
            del rec.transcript[:]
        timed.changed(rec.call_id)
        count = len(timed.pending[rec.call_id])
        began = time.perf_counter()
        snap = snapshot(rec, True)
        snap["_changes"] = count
        writer.submit(snap)
        encode.append(time.perf_counter() - began)
        await asyncio.sleep(rng.uniform(0.5, 1.5) * every)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--every", type=float, default=1.5, help="seconds between a call's changes")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--store", default="", help="store URL (default: a temporary SQLite file)")
    ap.add_argument("--max-p99", type=float, default=1.0)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    url = args.store or f"sqlite:///{tmp.name}/calls.db"
    store = await open_store(url)
    timed = Timed(store)
    writer = StoreWriter(timed)   # type: ignore[arg-type]
    writer.start()
    encode: list[float] = []
    began = time.monotonic()
    cpu = time.process_time()
    until = began + args.duration
    await asyncio.gather(*(one_call(n, writer, timed, args.every, until, encode)
                           for n in range(args.calls)))
    await writer.flush(30)
    took = time.monotonic() - began
    cpu = time.process_time() - cpu
    await writer.close()
    await store.close()
    lat = sorted(timed.latencies)
    p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: 0.0)
    print(f"store {store.kind}: {args.calls} live calls, a change every ~{args.every:g} s each, "
          f"{took:.1f} s")
    print(f"  changes: {len(lat)} ({len(lat) / took:.0f}/s); snapshots stored: "
          f"{timed.written} ({timed.written / took:.0f}/s, coalesced "
          f"{len(lat) / max(1, timed.written):.2f} changes each)")
    print(f"  change → stored: p50 {p(0.5) * 1000:.1f} ms, p99 {p(0.99) * 1000:.1f} ms, "
          f"max {lat[-1] * 1000 if lat else 0:.1f} ms")
    print(f"  snapshot on the loop: mean {statistics.fmean(encode) * 1e6:.0f} µs; process "
          f"CPU {cpu / took * 100:.0f} % of one core")
    return 1 if p(0.99) > args.max_p99 else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
