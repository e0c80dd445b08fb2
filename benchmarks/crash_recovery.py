"""Crash recovery on one host: ``kill -9`` → every orphaned call hung up.

A Twilio daemon and a Telnyx daemon (real processes) share one SQLite file; ``--calls`` calls
are placed on each through the simulator and greeted; both daemons are killed with SIGKILL
and started again at once (systemd's ``Restart=on-failure`` with ``RestartSec=0``). Measured
from the kill, per carrier: the restart (until ``/readyz`` says 200), the first and the last
call hung up through the carrier's REST API (the simulated Telnyx keeps its calls up with
nobody on them, as Telnyx does; Twilio ended its calls with their streams, so the hang-up finds
them ended). ``--offline`` runs the shipped offline speech (espeak, pocketsphinx, Silero: a
slower start) instead of cloud speech played by local fakes.

    .venv/bin/python benchmarks/crash_recovery.py                  # 10 calls each, 3 runs
    .venv/bin/python benchmarks/crash_recovery.py --calls 50 --offline --runs 1

Exit status 1 when a call was not hung up within ``--timeout`` seconds of the kill.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from patterd.simulate import TelnyxSigner, Wait, WaitForAgent, make_api, simulate_call  # noqa: E402
from patterd.simulate import telnyx as sim_telnyx  # noqa: E402
from tests.support.daemon_process import SEED, Daemon, telnyx_daemon, twilio_daemon  # noqa: E402
from tests.support.fakes.deepgram_speak import FakeDeepgramSpeak  # noqa: E402
from tests.support.fakes.openai_transcribe import FakeOpenAITranscribe  # noqa: E402


def sections(store: Path, cloud: tuple[Any, str, Any, str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "agent": {"first_message": "Thanks for calling Example Company.",
                  "silence_timeout": 600},
        "llm": {"provider": "rules", "rules": [], "fallback": "Sorry?"},
        "server": {"max_calls": 1000},
        "store": {"url": f"sqlite:///{store}"}, "logging": {"level": "info"}}
    if cloud is not None:
        stt, stt_url, tts, tts_url = cloud
        out.update(vad={"provider": "energy"},
                   stt={"provider": "openai", "api_key": stt.api_key, "base_url": stt_url},
                   tts={"provider": "deepgram", "api_key": tts.api_key, "base_url": tts_url})
    return out


async def one_run(calls: int, cloud: Any, timeout: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="patterd-crash-"))
    common = sections(tmp / "calls.db", cloud)
    daemons = {"twilio": twilio_daemon(tmp, "twilio", common),
               "telnyx": telnyx_daemon(tmp, "telnyx", common)}
    apis = {name: make_api(d.config) for name, d in daemons.items()}
    for api in apis.values():
        assert api is not None
        await api.start()
    tasks: dict[str, list[asyncio.Task[Any]]] = {}
    try:
        await asyncio.gather(*(d.start() for d in daemons.values()))
        for name, d in daemons.items():
            signer = TelnyxSigner(SEED) if name == "telnyx" else None
            tasks[name] = [asyncio.create_task(simulate_call(
                d.config, d.url, [WaitForAgent(timeout=60), Wait(3 * timeout)],
                api=apis[name], signer=signer, timeout=4 * timeout, keep_audio=False))
                for _ in range(calls)]
        deadline = time.monotonic() + 60 + calls
        while any(len(d.events("media_started")) < calls for d in daemons.values()):
            assert time.monotonic() < deadline, "the calls did not start"
            await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)                   # greeted, listening
        ids = {name: [e["call_id"] for e in d.events("media_started")]
               for name, d in daemons.items()}
        killed = time.monotonic()
        for d in daemons.values():
            d.kill()
        restarted = await asyncio.gather(*(d.start() for d in daemons.values()))
        hung: dict[str, dict[str, float]] = {name: {} for name in daemons}
        while time.monotonic() - killed < timeout:
            now = time.monotonic() - killed
            twilio_api = apis["twilio"]
            for r in twilio_api.requests:
                call = r.path.rsplit("/", 1)[-1].removesuffix(".json")
                if r.fields.get("Status") == "completed" and call in ids["twilio"]:
                    hung["twilio"].setdefault(call, now)
            for n, task in enumerate(tasks["telnyx"]):
                if task.done():
                    hung["telnyx"].setdefault(str(n), now)
            if all(len(hung[name]) == calls for name in daemons):
                break
            await asyncio.sleep(0.01)
        return {"restart": dict(zip(daemons, restarted)),
                "hung": {name: sorted(v.values()) for name, v in hung.items()},
                "calls": calls}
    finally:
        for d in daemons.values():
            d.stop()
        for group in tasks.values():
            for task in group:
                task.cancel()
        await asyncio.gather(*(t for g in tasks.values() for t in g), return_exceptions=True)
        for api in apis.values():
            await api.close()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=10, help="calls per daemon")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--offline", action="store_true")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    sim_telnyx.CLOSE_GRACE = 4 * args.timeout    # Telnyx keeps a call up with nobody on it
    cloud = None
    fakes: list[Any] = []
    if not args.offline:
        stt, tts = FakeOpenAITranscribe(script=[]), FakeDeepgramSpeak()
        fakes = [stt, tts]
        cloud = (stt, await stt.start(), tts, await tts.start())
    failed = False
    try:
        for run in range(1, args.runs + 1):
            out = await one_run(args.calls, cloud, args.timeout)
            for name in ("twilio", "telnyx"):
                hung = out["hung"][name]
                failed |= len(hung) < args.calls
                last = f"{hung[-1]:.2f} s" if len(hung) == args.calls else \
                    f"only {len(hung)} of {args.calls}"
                print(f"run {run} {name}: restart {out['restart'][name]:.2f} s; kill → first "
                      f"call hung up {hung[0] if hung else float('nan'):.2f} s, every call "
                      f"{last}" + (f" (median {statistics.median(hung):.2f} s)" if hung else ""))
    finally:
        for f in fakes:
            await f.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
