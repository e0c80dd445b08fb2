#!/usr/bin/env python3
"""Turn-taking: how soon the agent answers a finished turn, and how often it cuts a caller off.

A corpus generated offline by patterd's espeak voice (8 kHz, as a call carries it):

- ``ending``: utterances that are complete — questions, short answers, "yes", numbers;
- ``pause``: sentences with a pause in the middle (0.3-1.2 s of silence spliced between two
  parts: "I'd like to book" … "a table for two").

Each mode — ``silence`` (``vad.turn_model: false``, min_silence 0.5 s: what patterd did
before) and ``model`` (the default: Smart Turn after 0.2 s of silence, 1.3 s when it says "not
finished") — gets a fresh stub daemon (instant stub STT/TTS, the rules agent, batched Silero:
``calls.py``'s scenario A) pinned to one core, and ``--calls`` simulated Twilio callers (the
real media path: signed webhook, Media Streams WebSocket in real time) on the other, each
saying the whole corpus in its own order and waiting for each answer.

Per mode: p50/p95 of end of caller speech → first reply frame for the ending utterances and
for the pause sentences (from the end of their second part), and the premature end-of-turn
rate on the pause sentences: the agent began to answer in the pause, or before the second
part was over.

    .venv/bin/python benchmarks/turns.py                   # 1 caller, both modes
    .venv/bin/python benchmarks/turns.py --calls 20 --json turns.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import calls  # noqa: E402
from environment import describe, format_environment  # noqa: E402

ENDING = ("What time do you open tomorrow?", "Yes.", "No.", "Yes, please.", "Forty two.",
          "My order number is five five seven one.", "Can I speak to someone in sales?",
          "That's all, thank you.", "Is the shop open on Sunday?", "Seven thirty.",
          "I'd like to cancel my appointment.", "How much does it cost?", "Okay.",
          "Two people.", "Where are you located?", "Twelve.")
PAUSE = (("I'd like to book", "a table for two."), ("My account number is", "four five six."),
         ("I was wondering if", "you deliver on weekends."), ("Could you tell me", "the price?"),
         ("The problem is that", "my card was declined."), ("I need to change", "my address."),
         ("So basically", "I want a refund."), ("It's about", "the invoice from March."),
         ("Can you check", "whether my parcel shipped?"), ("We would like", "three rooms."),
         ("My name is", "Alex Martin."), ("I'm calling because", "the heating is broken."),
         ("The order was for", "two boxes of paper."), ("What I mean is", "the second one."),
         ("Let me think", "Tuesday works."), ("And also", "a receipt please."))
PAUSES = (0.3, 0.45, 0.6, 0.75, 0.9, 1.05, 1.2, 0.5)
MODES = {"silence": {"turn_model": False, "min_silence": 0.5},
         "model": {}}


async def _corpus() -> list[dict[str, Any]]:
    from patterd.simulate.speech import synthesize
    items: list[dict[str, Any]] = []
    for text in ENDING:
        items.append({"kind": "ending", "parts": [await synthesize(text)], "text": text})
    for i, (a, b) in enumerate(PAUSE):
        items.append({"kind": "pause", "parts": [await synthesize(a), await synthesize(b)],
                      "pause": PAUSES[i % len(PAUSES)], "text": f"{a} … {b}"})
    return items


def steps_for(items: list[dict[str, Any]]) -> list[Any]:
    from patterd.simulate import Say, Wait, WaitForAgent
    steps: list[Any] = [WaitForAgent(timeout=20)]
    for it in items:
        steps.append(Say(it["parts"][0], it["text"]))
        if it["kind"] == "pause":
            steps += [Wait(it["pause"]), Say(it["parts"][1], it["text"])]
        steps += [WaitForAgent(silence=0.8, timeout=10, required=False), Wait(0.3)]
    return steps


async def _run_mode(mode: str, n: int, items: list[dict[str, Any]], url: str, config: Any,
                    seed: int) -> dict[str, Any]:
    from patterd.simulate import simulate_call
    orders = []
    for i in range(n):
        order = list(items)
        random.Random(seed + i).shuffle(order)
        orders.append(order)
    results = await asyncio.gather(*(
        _delayed(0.2 * i, simulate_call(config, url, steps_for(order), keep_audio=False,
                                        timeout=600))
        for i, order in enumerate(orders)))
    ending, pause, premature, unanswered, failed = [], [], 0, 0, 0
    for order, res in zip(orders, results):
        if not res.ok:
            failed += 1
        turns = [t for t in res.turns if t.kind == "speech"]
        k = 0
        for it in order:
            if k >= len(turns):
                break
            if it["kind"] == "ending":
                t = turns[k]
                k += 1
                if t.latency is None:
                    unanswered += 1
                else:
                    ending.append(t.latency)
                continue
            first, second = turns[k], turns[k + 1] if k + 1 < len(turns) else None
            k += 2
            early = first.latency is not None or (second is not None and second.latency
                                                  is not None and second.latency < 0)
            premature += early
            if second is not None and second.latency is not None and not early:
                pause.append(second.latency)
    n_pause = n * len(PAUSE)

    def pct(v: list[float], q: float) -> float | None:
        return round(1000 * statistics.quantiles(v, n=100)[q - 1], 1) if len(v) > 2 else None
    return {"mode": mode, "calls": n, "failed_calls": failed,
            "ending": {"n": len(ending), "p50_ms": pct(ending, 50), "p95_ms": pct(ending, 95),
                       "unanswered": unanswered},
            "pause": {"n": n_pause, "premature": premature,
                      "premature_pct": round(100 * premature / n_pause, 1),
                      "p50_ms": pct(pause, 50), "p95_ms": pct(pause, 95)}}


async def _delayed(seconds: float, coro: Any) -> Any:
    await asyncio.sleep(seconds)
    return await coro


def run(args: argparse.Namespace) -> dict[str, Any]:
    from patterd.config import load_config
    env = describe()
    print(format_environment(env), flush=True)
    items = asyncio.run(_corpus())
    report: dict[str, Any] = {"environment": env, "command": " ".join(sys.argv), "modes": []}
    write = calls.write_config
    with tempfile.TemporaryDirectory(prefix="patterd-turns-") as tmp:
        for mode in args.modes.split(","):
            def with_vad(path: Path, *a: Any, _mode: str = mode, **kw: Any) -> None:
                write(path, *a, **kw)
                raw = json.loads(path.read_text())
                raw["vad"] = {"provider": "silero", **MODES[_mode]}
                path.write_text(json.dumps(raw))
            calls.write_config = with_vad
            daemon = calls.Daemon(Path(tmp), f"turns-{mode}", True, args.daemon_cpu)
            try:
                daemon.start()
                time.sleep(1.0)
                config = load_config(daemon.config)
                before = os.sched_getaffinity(0)
                os.sched_setaffinity(0, {args.load_cpu})   # the callers: the other core
                try:
                    out = asyncio.run(_run_mode(mode, args.calls, items, daemon.base, config,
                                                args.seed))
                finally:
                    os.sched_setaffinity(0, before)
            finally:
                daemon.stop()
                calls.write_config = write
            report["modes"].append(out)
            e, p = out["ending"], out["pause"]
            print(f"{mode:8} calls {out['calls']:3}  ending p50/p95 {e['p50_ms']}/{e['p95_ms']} ms"
                  f" (n={e['n']}, unanswered {e['unanswered']})  pause: premature "
                  f"{p['premature']}/{p['n']} = {p['premature_pct']} %, p50/p95 "
                  f"{p['p50_ms']}/{p['p95_ms']} ms  failed calls {out['failed_calls']}",
                  flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1, help="concurrent callers (each says the "
                    "whole corpus)")
    ap.add_argument("--modes", default="silence,model")
    ap.add_argument("--daemon-cpu", type=int, default=1)
    ap.add_argument("--load-cpu", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
