"""Memory kept per finished call: the call registry, its store writer and the webhook dedupe.

Runs ``--calls`` simulated calls, ``--concurrent`` at a time, through what a daemon's calls
go through in memory — a real :class:`~patterd.gateway.Gateway` (registry, dedupe keys, live
events), its registry wired to a real ``StoreWriter`` over a temporary SQLite file as the
daemon wires it — each call with status callbacks, a transcript of ``--lines`` lines, turns,
events and a price; then waits out the eviction grace (``--grace`` seconds; the daemon's is a
minute) and prints the memory the calls left behind: the Python heap (tracemalloc, with
``--tracemalloc``: allocations still held) or the process's RSS, after ``--warmup`` calls and
at the end, per call in between, with what is still held (records, tombstones, dedupe keys).

    .venv/bin/python benchmarks/registry_memory.py                     # 5,000 calls, RSS
    .venv/bin/python benchmarks/registry_memory.py --tracemalloc
    PYTHONPATH=/path/to/other/tree .venv/bin/python benchmarks/registry_memory.py  # compare

It runs against whichever ``patterd`` is importable first (``PYTHONPATH``), else this tree's:
a tree whose registry has no eviction runs the same calls (and keeps them).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[1]))   # after PYTHONPATH: see above

from patterd.call.dedupe import Deduper  # noqa: E402
from patterd.call.records import snapshot  # noqa: E402
from patterd.config import build_config  # noqa: E402
from patterd.gateway import Gateway  # noqa: E402
from patterd.store import StoreWriter, open_store  # noqa: E402

WORDS = ("thanks for calling example company how can I help you today we are open from nine "
         "to five on weekdays and ten to two on saturdays").split()
CONFIG = {"server": {"public_url": "https://voice.example.com"}, "phone_number": "+15550001234",
          "carrier": {"provider": "twilio", "account_sid": "AC" + "1f" * 16,
                      "auth_token": "f" * 32, "configure_number": False},
          "store": {"url": "sqlite:///:memory:"}}


def rss_bytes() -> int:
    """The process's resident set size."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_call(gw: Gateway, n: int, lines: int) -> None:
    """A call's life as the registry sees it: webhooks (deduped), a transcript, the end,
    the price, the carrier's final callback."""
    rng = random.Random(n)
    sid = f"CA{n:032x}"
    reg = gw.registry
    gw.deduper.first_time(("twilio-voice", sid))
    reg.ensure(sid, "twilio", direction="inbound", from_number=f"+1555{n % 10_000_000:07d}",
               to_number="+15550001234")
    for seq, state in enumerate(("ringing", "in-progress")):
        gw.deduper.first_time(("twilio-status", sid, state, seq))
        gw.carrier_status(sid, "twilio", state, seq, timestamp="Mon, 7 Dec 2026 17:00:00 +0000")
    rec = reg.get(sid)
    assert rec is not None
    for index in range(lines):
        role = "agent" if index % 2 == 0 else "caller"
        rec.transcript.append({"role": role, "at": time.time(),
                               "text": " ".join(rng.choices(WORDS, k=rng.randint(4, 16)))})
        if role == "agent":
            rec.turns.append({"stt": round(rng.uniform(0.1, 0.3), 4),
                              "llm": round(rng.uniform(0.2, 0.6), 4),
                              "tts": round(rng.uniform(0.1, 0.3), 4),
                              "response": round(rng.uniform(0.4, 1.1), 4)})
        reg.touch(rec)
    reg.add_event(sid, "twilio", "recording", source="local", path=f"/tmp/{sid}.wav",
                  seconds=round(rng.uniform(5, 90), 2))
    rec.media_seconds = rng.uniform(5, 90)
    gw.price_call(rec)
    gw.finish_call(sid, "twilio", "completed", duration=rec.media_seconds)
    gw.deduper.first_time(("twilio-status", sid, "completed", 3))
    gw.carrier_status(sid, "twilio", "completed", 3, seconds=int(rec.media_seconds),
                      duration=int(rec.media_seconds))
    gw.deduper.first_time(("twilio-price", sid))


async def settle(gw: Gateway, writer: StoreWriter, grace: float, ttl: float | None) -> None:
    """Everything written, the grace (and a short ``ttl``) over, the registry swept."""
    assert await writer.flush(60)
    await asyncio.sleep(max(grace, ttl or 0.0) + 1.05)   # (the registry sweeps once a second)
    gw.registry.live_count()
    gw.deduper.first_time(("benchmark", time.time()))    # (it forgets as keys come)
    gc.collect()


def held(gw: Gateway) -> dict[str, int]:
    reg = gw.registry
    return {"records": len(reg), "tombstones": len(getattr(reg, "_evicted", ())),
            "dedupe_keys": len(gw.deduper)}


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=2500,
                    help="calls before the first measure (the bounded buffers fill up: the "
                    "live events bus, the ended calls the events remember)")
    ap.add_argument("--concurrent", type=int, default=50)
    ap.add_argument("--lines", type=int, default=12, help="transcript lines per call")
    ap.add_argument("--grace", type=float, default=1.0,
                    help="seconds an ended call stays in memory (the daemon: 60)")
    ap.add_argument("--ttl", type=float, default=None,
                    help="seconds dedupe keys and tombstones are kept (default: the daemon's, "
                    "10 min and 1 h): a short one shows what is left once they expire")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="measure the Python heap (slower) instead of RSS")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    store = await open_store(f"sqlite:///{tmp.name}/calls.db")
    gw = Gateway(build_config(CONFIG, env={}))
    reg = gw.registry
    writer = StoreWriter(store)
    reg.on_change = lambda rec: writer.submit(snapshot(rec, reg.held(rec.call_id)))
    evicts = hasattr(reg, "settled")
    if evicts:
        reg.evict_after = args.grace
        writer.on_settled = reg.settled
    if args.ttl is not None:
        gw.deduper = Deduper(ttl=args.ttl)
        reg.tomb_seconds = args.ttl
    writer.start()
    if args.tracemalloc:
        tracemalloc.start()
    measure = (lambda: tracemalloc.get_traced_memory()[0]) if args.tracemalloc else rss_bytes

    async def run(first: int, count: int) -> None:
        for start in range(first, first + count, args.concurrent):
            for n in range(start, min(first + count, start + args.concurrent)):
                one_call(gw, n, args.lines)
            await asyncio.sleep(0)                # the writer's turn, as between webhooks
            if writer.pending > 2000:
                await writer.flush(30)

    began = time.monotonic()
    await run(0, args.warmup)
    await settle(gw, writer, args.grace, args.ttl)
    before, held_before = measure(), held(gw)
    await run(args.warmup, args.calls - args.warmup)
    await settle(gw, writer, args.grace, args.ttl)
    after, held_after = measure(), held(gw)
    took = time.monotonic() - began
    await writer.close()
    await store.close()
    counted = args.calls - args.warmup
    per_call = (after - before) / max(1, counted)
    what = "Python heap (tracemalloc)" if args.tracemalloc else "RSS"
    out = {"calls": args.calls, "warmup": args.warmup, "evicting": evicts, "measure": what,
           "before_bytes": before, "after_bytes": after, "per_call_bytes": round(per_call),
           "held_after_warmup": held_before, "held_at_end": held_after,
           "written": writer.written, "seconds": round(took, 1)}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.calls} calls ({args.warmup} warm-up), {args.lines} lines each, "
          f"{'evicting after ' + format(args.grace, 'g') + ' s' if evicts else 'no eviction'}"
          f", {took:.1f} s, {writer.written} snapshots stored")
    print(f"  {what}: {before / 2**20:.1f} MiB after the warm-up → {after / 2**20:.1f} MiB "
          f"after {counted} more calls: {per_call / 1024:+.2f} KiB per call")
    print(f"  held after the warm-up: {held_before}; at the end: {held_after}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
