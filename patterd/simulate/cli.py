"""``patterd simulate``: place simulated calls against a running daemon (README.md, "Command line").

Steps run in the order given on the command line. The caller first listens to the greeting
(unless the first step is a barge-in), and after each ``--say``/``--wav``/``--dtmf`` listens to
the agent's reply; then it hangs up. With no steps: listen to the greeting, then hang up — or,
with ``--calls N`` (N > 1), say one phrase the agent answers (:func:`default_phrase`), so the
summary has response-latency percentiles.

``--outbound TO``: ask the daemon's admin API to call TO instead, and be the carrier and the
callee (``--callee human|machine|busy|no-answer|failed|canceled``; a human runs the steps).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from ..config import Config, ConfigError, TelnyxSettings, load_config
from .callee import KINDS, Callee
from .caller import Dtmf, Step, Wait, WaitForAgent, WaitForAgentSpeech
from .outbound import simulate_outbound
from .outbound_result import format_outbound
from .runner import SimulationError, simulate
from .speech import SpeechError, say, say_wav, write_wav
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
    out = p.add_argument_group("outbound calls (placed through the daemon's admin API)")
    out.add_argument("--outbound", metavar="TO", help="have the daemon call TO (E.164)")
    out.add_argument("--callee", choices=KINDS, default="human",
                     help="who answers (default human: runs the steps)")
    out.add_argument("--admin-token", help="the admin API's bearer token (default: "
                                           "$PATTERD_ADMIN_TOKEN, then admin.token)")
    out.add_argument("--amd", action=argparse.BooleanOptionalAction, default=None,
                     help="ask for answering-machine detection (default: the daemon's)")
    out.add_argument("--voicemail", metavar="TEXT", help="the voicemail message to leave")
    out.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                     help="a call variable (repeatable)")
    out.add_argument("--ring", type=float, metavar="SECONDS", help="how long the phone rings")
    out.add_argument("--shuffle-callbacks", action="store_true",
                     help="deliver status callbacks out of order")
    out.add_argument("--duplicate-callbacks", action="store_true",
                     help="deliver every callback twice")
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
    if args.calls < 1 or (args.outbound and args.calls != 1):
        print("patterd simulate: --calls: expected at least 1 (exactly 1 with --outbound)",
              file=sys.stderr)
        return EXIT_USAGE
    if any("=" not in v for v in args.var):
        print("patterd simulate: --var: expected NAME=VALUE", file=sys.stderr)
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


def default_phrase(config: Config) -> str:
    """What each caller says when ``--calls N`` is given no script, so that every call has a
    turn to time: the first phrase of the rules agent that gets a reply and keeps the call up
    (else its first phrase), or "hello" for other agents."""
    phrased = [r for r in config.llm.rules if r.phrases] if config.llm.provider == "rules" \
        else []
    for rule in phrased:
        if rule.action is None and rule.reply:
            return rule.phrases[0]
    return phrased[0].phrases[0] if phrased else "hello"


async def _main(config: Config, url: str, args: argparse.Namespace,
                signer: TelnyxSigner | None) -> int:
    actions = args.steps or []
    if not actions and args.calls > 1 and not args.outbound:
        phrase = default_phrase(config)
        actions = [("say", phrase)]
        print(f"patterd simulate: no --say given: each caller says {phrase!r} once, so every "
              "call has a turn to time (give --say/--dtmf to choose)", file=sys.stderr)
    steps = await build_steps(actions, args.reply_timeout)
    if args.outbound:
        return await _outbound(config, url, args, signer, steps)
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


async def _outbound(config: Config, url: str, args: argparse.Namespace,
                    signer: TelnyxSigner | None, steps: list[Step]) -> int:
    token = args.admin_token or os.environ.get("PATTERD_ADMIN_TOKEN") or config.admin.token
    if not token:
        raise SimulationError("--admin-token: required to place calls (or set "
                              "PATTERD_ADMIN_TOKEN, or admin.token in the config)")
    callee = Callee(args.callee, steps=steps, ring_seconds=args.ring,
                    shuffle_callbacks=args.shuffle_callbacks,
                    duplicate_callbacks=args.duplicate_callbacks)
    variables = dict(v.split("=", 1) for v in args.var) or None
    result = await simulate_outbound(config, url, args.outbound, callee, admin_token=token,
                                     machine_detection=args.amd,
                                     voicemail_message=args.voicemail, variables=variables,
                                     signer=signer, timeout=args.timeout)
    if args.out:
        write_wav(args.out, result.agent_audio)
    sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n" if args.json
                     else format_outbound(result))
    return EXIT_OK if result.ok else EXIT_FAILED
