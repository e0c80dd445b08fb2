"""The ``patterd`` command line (README.md, "Command line")."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, ConfigError, load_config

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 without a traceback
        self.print_usage(sys.stderr)
        print(f"patterd: {message}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="patterd", description="Voice-gateway daemon: an AI voice agent on a "
                                            "phone number.")
    p.add_argument("--config", help="YAML config file (default: $PATTERD_CONFIG)")
    p.add_argument("--version", action="version", version=f"patterd {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    serve = sub.add_parser("serve", help="run the daemon (the default)")
    serve.add_argument("--config", dest="sub_config")
    check = sub.add_parser("check", help="validate a config and print it with secrets masked")
    check.add_argument("--config", dest="sub_config")
    call = sub.add_parser("call", help="place an outbound call through the running daemon")
    call.add_argument("--config", dest="sub_config")
    call.add_argument("--to", required=True, help="E.164 number to call")
    # Tri-state: without either flag the daemon's agent.machine_detection applies.
    call.add_argument("--machine-detection", action=argparse.BooleanOptionalAction,
                      default=None, help="detect answering machines and leave the voicemail "
                                         "message (default: the daemon's "
                                         "agent.machine_detection)")
    call.add_argument("--voicemail", default=None, help="voicemail message for this call")
    call.add_argument("--var", action="append", default=[], metavar="K=V",
                      help="a variable for the agent's messages (repeatable)")
    call.add_argument("--url", default="", help="the daemon's base URL (default: from config)")
    sub.add_parser("version", help="print the version")
    # `simulate` is dispatched to patterd.simulate.cli before parsing (see main); listed for --help
    sub.add_parser("simulate", add_help=False,
                   help="place simulated calls against a running daemon (see "
                        "`patterd simulate --help`)")
    return p


def _config_path(args: argparse.Namespace) -> str:
    path = getattr(args, "sub_config", None) or args.config or os.environ.get("PATTERD_CONFIG")
    if not path:
        print("patterd: --config PATH is required (or set PATTERD_CONFIG)", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)
    return str(path)


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"patterd: invalid configuration in {path}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on uvloop when available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate and print the effective config."""
    from .config.render import render

    path = _config_path(args)
    cfg = _load(path)
    sys.stdout.write(render(cfg))
    print(f"# {path}: OK", file=sys.stderr)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    from .ops.logging import configure_logging, get_logger
    from .patter import Patter, carrier_for
    from .startup import StartupError, describe, path_of

    path = _config_path(args)
    cfg = _load(path)
    configure_logging(cfg.logging.level, cfg.logging.format)
    phone = Patter(carrier_for(cfg.carrier), cfg.phone_number, config=cfg)
    phone.config_path = Path(path)
    try:
        run_async(phone.serve())
    except KeyboardInterrupt:
        return EXIT_OK
    except StartupError as exc:     # which part could not start, and the file or address
        fields = {"path": exc.path} if exc.path else {}
        get_logger("patterd").error("startup_failed", component=exc.component,
                                    error=exc.detail, **fields)
        return EXIT_RUNTIME
    except Exception as exc:  # noqa: BLE001 - a runtime failure: one clear line, exit 1
        fields = {"path": path_of(exc)} if path_of(exc) else {}
        get_logger("patterd").error("startup_failed", error=describe(exc), **fields)
        return EXIT_RUNTIME
    return EXIT_OK


def cmd_call(args: argparse.Namespace) -> int:
    """``POST /v1/calls`` on the running daemon; prints the call id."""
    import json
    import urllib.error
    import urllib.request

    cfg = _load(_config_path(args))
    if not cfg.admin.token:
        print("patterd: admin.token is not set (nor PATTERD_ADMIN_TOKEN): the admin API is off",
              file=sys.stderr)
        return EXIT_CONFIG
    variables: dict[str, str] = {}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"patterd: --var {item!r}: expected NAME=VALUE", file=sys.stderr)
            return EXIT_CONFIG
        variables[name] = value
    body: dict[str, object] = {"to": args.to, "variables": variables}
    if args.machine_detection is not None:
        body["machine_detection"] = args.machine_detection
    if args.voicemail is not None:
        body["voicemail_message"] = args.voicemail
    host = cfg.server.host if cfg.server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    url = (args.url or f"http://{host}:{cfg.server.port}").rstrip("/") + "/v1/calls"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {cfg.admin.token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:1000]
        try:    # the admin API answers {"error": "…"}: show the sentence, not the JSON
            detail = str(json.loads(detail)["error"])
        except (ValueError, KeyError, TypeError):
            pass
        print(f"patterd: the call was not placed (HTTP {exc.code}): {detail}", file=sys.stderr)
        return EXIT_CONFIG if exc.code == 400 else EXIT_RUNTIME
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        print(f"patterd: cannot reach the daemon at {url} ({reason}): is it running with this "
              "config? (--url for another address)", file=sys.stderr)
        return EXIT_RUNTIME
    print(answer.get("call_id", ""))
    return EXIT_OK


def split_command(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """``argv`` as (the global options before the subcommand, the subcommand, the rest).

    The subcommand is the first argument that is neither an option nor an option's value, so
    ``patterd --config f simulate …`` finds ``simulate``; ``None`` when there is none
    (``patterd --config f`` serves).
    """
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config":
            i += 2               # its value may look like anything, even "simulate"
        elif arg.startswith("-"):
            i += 1
        else:
            return args[:i], arg, args[i + 1:]
    return args, None, []


def _only_config_options(head: Sequence[str]) -> bool:
    """Whether ``head`` is only ``--config PATH`` / ``--config=PATH`` (``--version``, ``-h`` and
    mistakes are left to the main parser)."""
    i = 0
    while i < len(head):
        if head[i] == "--config":
            i += 2
        elif head[i].startswith("--config="):
            i += 1
        else:
            return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``patterd`` console script."""
    rest = list(sys.argv[1:] if argv is None else argv)
    head, command, tail = split_command(rest)
    if command == "simulate" and _only_config_options(head):
        # The simulator has its own parser; a --config given before the subcommand goes to it
        # first, so one given after it still wins (as with the other subcommands).
        from .simulate.cli import main as simulate_main
        return simulate_main(head + tail)
    args = _parser().parse_args(rest)
    try:
        if args.command == "version":
            print(f"patterd {__version__}")
            return EXIT_OK
        if args.command == "check":
            return cmd_check(args)
        if args.command == "call":
            return cmd_call(args)
        return cmd_serve(args)
    except KeyboardInterrupt:
        return EXIT_OK
