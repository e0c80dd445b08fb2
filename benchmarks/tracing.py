#!/usr/bin/env python3
"""Micro-benchmark: the CPU a call's tracing costs, on and off.

Runs the very code a call runs for its timing (``patterd.ops.trace``: the stages the latency
histogram reports, the LLM round, the synthesis, a carrier action, the call's end) for many
synthetic calls of ``--turns`` turns, with no tracer (tracing off: the turn figures for the
record only) and with the OpenTelemetry tracer exporting over OTLP/HTTP to a receiver
(benchmarks/otlp_sink.py) in another process. CPU is the whole process's (the exporter's
batching thread included). Nothing here runs per media frame: tracing adds nothing there.

    .venv/bin/python benchmarks/tracing.py [--calls 2000] [--turns 6]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from webhooks import free_port  # noqa: E402

from patterd.ops import trace as tracing  # noqa: E402
from patterd.ops.metrics import Metrics  # noqa: E402


def one_call(n: int, turns: int, tracer: Any, metrics: Metrics) -> None:
    """A call's tracing work: the stages of ``turns`` turns, their LLM and TTS spans, a
    barge-in, a hang-up and the end."""
    trace = tracing.CallTrace(f"CA{n:032x}", "twilio", tracer,
                              {"patterd.direction": "inbound", "patterd.call.from": "+*******4321"})
    stage = metrics.turn_latency.labels
    with tracing.within(trace):
        tts = tracing.begin("tts", **{"patterd.tts.characters": 18})   # the greeting
        stage("tts_first_byte").observe(0.05)
        tts.end(**{"patterd.tts.provider": "espeak", "patterd.tts.first_byte_s": 0.05})
        for t in range(turns):
            stage("endpointing").observe(0.5)
            stage("stt").observe(0.12)
            tracing.reply_started("what are your hours", None)
            llm = tracing.begin("llm", **{"patterd.llm.round": 0})
            stage("llm_first_token").observe(0.2)
            llm.end(**{"patterd.llm.provider": "openai", "gen_ai.usage.input_tokens": 420,
                       "gen_ai.usage.output_tokens": 30, "patterd.llm.tool_calls": 0})
            tts = tracing.begin("tts", **{"patterd.tts.characters": 60})
            stage("tts_first_byte").observe(0.08)
            stage("response").observe(0.9)
            tracing.answered(0.9)
            tts.end(**{"patterd.tts.provider": "espeak", "patterd.tts.first_byte_s": 0.08})
            if t == 1:
                metrics.barge_ins.inc()
        action = tracing.begin("carrier.hangup", **{"patterd.carrier.action": "hangup"})
        action.end(**{"patterd.carrier.ok": True})
    trace.close(**{"patterd.call.outcome": "completed", "patterd.cost.total_usd": 0.0123})


def measure(calls: int, turns: int, tracer: Any) -> float:
    """CPU seconds of ``calls`` calls (process-wide, exporter thread included)."""
    metrics = Metrics()
    for n in range(50):                       # warm up
        one_call(n, turns, tracer, metrics)
    if tracer is not None:
        tracer._provider.force_flush()
    cpu0 = time.process_time()
    for n in range(calls):
        one_call(n, turns, tracer, metrics)
        if tracer is not None and n % 100 == 99:
            tracer._provider.force_flush()    # keep up: no span dropped for a full queue
    if tracer is not None:
        tracer._provider.force_flush()        # the export's own CPU counts too
    return time.process_time() - cpu0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--turns", type=int, default=6, help="turns per call (6: a minute's call)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    port = free_port()
    sink = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "otlp_sink.py"),
                             str(port)])
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=1)
                break
            time.sleep(0.1)
        from patterd.ops.otel import OtelTracer
        off = measure(args.calls, args.turns, None)
        tracer = OtelTracer(f"http://127.0.0.1:{port}", schedule_delay_ms=200)
        on = measure(args.calls, args.turns, tracer)
        tracer.shutdown()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as resp:
            received = json.loads(resp.read())
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=10)
    spans_per_call = 1 + 1 + args.turns * 5 + 1 + (1 if args.turns > 1 else 0)
    report = {
        "calls": args.calls, "turns_per_call": args.turns, "spans_per_call": spans_per_call,
        "spans_received": received.get("spans"),
        "off_us_per_call": round(off / args.calls * 1e6, 1),
        "on_us_per_call": round(on / args.calls * 1e6, 1),
        # a call of `turns` turns taken as one minute long (about one turn per 10 s)
        "off_cpu_s_per_call_minute": round(off / args.calls, 6),
        "on_cpu_s_per_call_minute": round(on / args.calls, 6),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"tracing, {args.calls} calls of {args.turns} turns ({spans_per_call} spans each; "
              f"the receiver got {report['spans_received']}):")
        print(f"  off: {report['off_us_per_call']} µs CPU per call "
              f"({report['off_cpu_s_per_call_minute']} CPU-s per call-minute)")
        print(f"  on:  {report['on_us_per_call']} µs CPU per call "
              f"({report['on_cpu_s_per_call_minute']} CPU-s per call-minute)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
