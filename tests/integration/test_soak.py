"""The churn soak, short: ``benchmarks/soak.py`` for 90 s of load at 20 calls in flight on both
carriers, against two real daemons with the offline default backends (pocketsphinx, espeak,
rules, batched Silero). Calls start as a Poisson stream and end at every instant (mid-phrase,
mid-reply, mid-keypad entry, in a transfer, around an AMD verdict, by either side, by a socket
reset without ``stop``); no caller may go unanswered, no call may end other than its ending
expects, and once the load is over each daemon must come back to its idle asyncio task and
open-fd counts.

Tolerances (the soak's defaults, see benchmarks/README.md): +2 tasks and +2 fds over the lowest
idle count seen after warm-up, compared with the lowest count seen over up to 90 s after the
last call ended — room for one periodic sweep caught mid-flight; a leak of one task or socket
per call would show as tens here. 20 calls keep the daemons' core under ~25 % (about 0.75
CPU-seconds per call-minute with these backends), so the timing is not what is tested: a reply
counts as given within 5 s.

About 2.5 minutes in all. The soak's own report (``--json``) is printed on failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_a_short_churn_soak_answers_every_caller_and_leaks_nothing(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--duration", "90",
           "--calls", "20", "--carrier", "both", "--call-seconds", "3,40",
           "--sample-every", "10", "--check-records", "40", "--workdir", str(tmp_path),
           "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]      # 2: the soak could not run
    report = json.loads(proc.stdout)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from soak import print_report
    print_report(report)                 # shown by pytest when the test fails
    for name, c in report["carriers"].items():
        assert c["started"] >= 20, name                         # churn happened
        assert len(c["by_ending"]) >= 6, name                   # most endings were drawn
        assert c["turns_asked"] >= 10, name
        # one comparison, so a failure shows every figure at once
        seen = {"turns_unanswered": c["turns_unanswered"], "failed": c["failed"],
                "leaked_tasks": c["after"]["leaked_tasks"],
                "leaked_fds": c["after"]["leaked_fds"],
                "record_problems": c["records"]["problems"], "daemon_exit": c["daemon_exit"]}
        assert seen == {"turns_unanswered": 0, "failed": 0, "leaked_tasks": 0, "leaked_fds": 0,
                        "record_problems": [], "daemon_exit": 0}, (name, report["reasons"])
    assert report["ok"], report["reasons"]
