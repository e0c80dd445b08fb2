"""``patterd simulate``: place simulated calls against a running daemon (contract §1).

Steps run in the order given on the command line. The caller first listens to the greeting
(unless the first step is a barge-in), and after each ``--say``/``--wav``/``--dtmf`` listens to
the agent's reply; then it hangs up. With no steps: listen to the greeting, then hang up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from ..config import Config, ConfigError, TelnyxSettings, load_config
from .caller import Dtmf, Step, Wait, WaitForAgent, WaitForAgentSpeech
from .runner import SimulationError, simulate
from .speech import SpeechError, say, say_wav
from .telnyx import TelnyxSigner

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
KEY_ENV = "PATTERD_SIM_TELNYX_SIGNING_KEY"
DTMF = re.compile(r"[0-9A-Da-d*#]+")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: exit 2, no traceback
        self.print_usage(sys.stderr)
        print(f"patterd simulate: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _step(kind: str) -> Any:
    return lambda value: (kind, value)


def parser() -> argparse.ArgumentParser:
    """The ``patterd simulate`` argument parser."""
    p = _Parser(prog="patterd simulate", description="Place a simulated call against a running "
                "daemon exactly as the configured carrier would.")
    p.add_argument("--config", help="the daemon's YAML config (default: $PATTERD_CONFIG)")
    p.add_argument("--url", help="where the daemon listens (default: "
                                 "http://127.0.0.1:{server.port})")
    steps = p.add_argument_group("the caller's script (in the order given)")
    steps.add_argument("--say", dest="steps", action="append", type=_step("say"),
                       metavar="TEXT", help="say TEXT (espeak), then listen to the reply")
    steps.add_argument("--wav", dest="steps", action="append", type=_step("wav"),
                       metavar="FILE", help="play a WAV file, then listen to the reply")
    steps.add_argument("--dtmf", dest="steps", action="append", type=_step("dtmf"),
                       metavar="DIGITS", help="press keys, then listen to the reply")
    steps.add_argument("--barge-in", dest="steps", action="append", type=_step("barge_in"),
                       metavar="TEXT", help="say TEXT while the agent is speaking")
    steps.add_argument("--wait", dest="steps", action="append", type=_step("wait"),
                       metavar="SECONDS", help="stay silent on the line")
    p.add_argument("--out", metavar="WAV", help="write what the caller heard (8 kHz mono WAV)")
    p.add_argument("--calls", type=int, default=1, help="concurrent calls (default 1)")
    p.add_argument("--stagger", type=float, default=0.2, help="seconds between call starts")
    p.add_argument("--json", action="store_true", help="machine-readable results")
    p.add_argument("--pid", type=int, help="the daemon's PID for CPU figures (default: the "
                                           "process listening on --url's port)")
    p.add_argument("--telnyx-signing-key", metavar="BASE64_SEED",
                   help=f"Ed25519 seed signing Telnyx webhooks (default: ${KEY_ENV})")
    p.add_argument("--codec", choices=("PCMU", "PCMA"), default="PCMU",
                   help="Telnyx: the caller leg's codec (default PCMU)")
    p.add_argument("--reply-timeout", type=float, default=15.0,
                   help="seconds to wait for the agent to speak (default 15)")
    p.add_argument("--timeout", type=float, default=300.0, help="longest call in seconds")
    p.add_argument("--no-transcribe", action="store_true",
                   help="do not recognise the agent's words")
    p.add_argument("--no-status-callback", action="store_true",
                   help="Twilio: do not post the final status callback")
    return p


async def build_steps(actions: list[tuple[str, str]], reply_timeout: float = 15.0
                      ) -> list[Step]:
    """The caller's script for command-line actions (see the module docstring)."""
    listen = WaitForAgent(timeout=reply_timeout)
    steps: list[Step] = []
    if not actions or actions[0][0] != "barge_in":
        steps.append(listen)
    for kind, value in actions:
        if kind == "say":
            steps.append(await say(value))
        elif kind == "wav":
            steps.append(say_wav(value))
        elif kind == "dtmf":
            if not DTMF.fullmatch(value):
                raise SpeechError(f"--dtmf {value!r}: expected digits 0-9, *, #, A-D")
            steps.append(Dtmf(value.upper()))
        elif kind == "barge_in":
            steps += [WaitForAgentSpeech(0.6, timeout=reply_timeout), await say(value)]
        elif kind == "wait":
            try:
                steps.append(Wait(float(value)))
            except ValueError:
                raise SpeechError(f"--wait {value!r}: expected seconds") from None
            continue
        steps.append(listen)
    return steps


def signer_for(config: Config, key: str | None) -> TelnyxSigner | None:
    """The Telnyx webhook signer, checked against ``carrier.public_key``."""
    carrier = config.carrier
    if not isinstance(carrier, TelnyxSettings):
        return None
    key = key or os.environ.get(KEY_ENV, "")
    if not key:
        if carrier.require_signature:
            raise SimulationError(f"--telnyx-signing-key: required to sign Telnyx webhooks "
                                  f"(or set {KEY_ENV}); the seed of carrier.public_key")
        return None
    try:
        signer = TelnyxSigner.from_base64(key)
    except ValueError as exc:
        raise SimulationError(f"--telnyx-signing-key: {exc}") from None
    if carrier.public_key:
        from ..carriers.telnyx.signature import KeyFormatError, load_public_key
        try:
            configured = bytes(load_public_key(carrier.public_key))
        except KeyFormatError:
            configured = b""
        if configured and configured != bytes(signer.key.verify_key):
            raise SimulationError("--telnyx-signing-key: its public key "
                                  f"{signer.public_key_b64} is not carrier.public_key")
    return signer


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``patterd simulate``; 0 all calls as expected, 1 otherwise, 2 usage."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:          # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    path = args.config or os.environ.get("PATTERD_CONFIG")
    if not path:
        print("patterd simulate: --config PATH is required (or set PATTERD_CONFIG)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.calls < 1:
        print("patterd simulate: --calls: expected at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"patterd simulate: invalid configuration in {path}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    url = (args.url or f"http://127.0.0.1:{config.server.port}").rstrip("/")
    try:
        signer = signer_for(config, args.telnyx_signing_key)
        return _run(_main(config, url, args, signer))
    except (SimulationError, SpeechError) as exc:
        print(f"patterd simulate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED


async def _main(config: Config, url: str, args: argparse.Namespace,
                signer: TelnyxSigner | None) -> int:
    steps = await build_steps(args.steps or [], args.reply_timeout)
    report = await simulate(config, url, steps, calls=args.calls, out=args.out,
                            json_output=args.json, stagger=args.stagger, pid=args.pid,
                            signer=signer, codec=args.codec, timeout=args.timeout,
                            transcribe=not args.no_transcribe,
                            status_callback=not args.no_status_callback)
    return EXIT_OK if report.ok else EXIT_FAILED


def _run(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
