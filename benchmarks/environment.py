"""What a benchmark ran on, printed with every figure so that anyone can tell whether theirs
compare: CPU model, kernel, Python, the versions that matter on the media path, ONNX Runtime's
thread settings as patterd uses them, the load average and how busy each core was just before.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from typing import Any

PACKAGES = ("aiohttp", "uvloop", "onnxruntime", "numpy", "soxr", "pipecat-ai")
ORT_THREADS = {"intra_op_num_threads": 1, "inter_op_num_threads": 1, "allow_spinning": 0,
               "sessions": "Silero VAD (batched), Smart Turn v3.2 (batched, own worker)"}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ticks() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy ticks, all ticks) from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *vals = line.split()
                    v = [int(x) for x in vals]
                    idle = v[3] + v[4]
                    out[int(name[3:])] = (sum(v) - idle, sum(v))
    except OSError:
        pass
    return out


def busy_cores(seconds: float = 1.0) -> dict[int, float]:
    """How busy each core was (%) over ``seconds``, before the benchmark starts: what others
    take from it."""
    a = _ticks()
    time.sleep(seconds)
    b = _ticks()
    return {c: round(100.0 * (b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]), 1)
            for c in a if c in b}


def describe(sample: float = 1.0) -> dict[str, Any]:
    """The environment as a JSON-ready dict."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(), "packages": versions,
        "onnxruntime_threads": ORT_THREADS,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "busy_before_pct": busy_cores(sample) if sample > 0 else {},
    }


def format_environment(env: dict[str, Any]) -> str:
    """Human lines for :func:`describe`'s dict; flags a machine that is not quiet."""
    pk = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    ort = env["onnxruntime_threads"]
    busy = ", ".join(f"cpu{c} {p} %" for c, p in env["busy_before_pct"].items())
    lines = [f"environment: {env['cpu']} ({env['cores']} cores), Linux {env['kernel']}, "
             f"Python {env['python']}",
             f"  {pk}",
             f"  onnxruntime: intra-op {ort['intra_op_num_threads']}, inter-op "
             f"{ort['inter_op_num_threads']}, spinning {ort['allow_spinning']} "
             f"({ort['sessions']})",
             f"  load average {env['loadavg']}; busy before the run: {busy or 'unknown'}"]
    if env["loadavg"][0] > 0.5 or any(p > 5 for p in env["busy_before_pct"].values()):
        lines.append("  NOTE: the machine is not quiet: figures from this run are provisional")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_environment(describe()))
