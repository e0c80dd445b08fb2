"""The ``patterd`` command line (contract §1)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
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

    path = _config_path(args)
    cfg = _load(path)
    configure_logging(cfg.logging.level, cfg.logging.format)
    phone = Patter(carrier_for(cfg.carrier), cfg.phone_number, config=cfg)
    phone.config_path = __import__("pathlib").Path(path)
    try:
        run_async(phone.serve())
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - a runtime failure: one clear line, exit 1
        get_logger("patterd").error("startup_failed", error=f"{type(exc).__name__}: {exc}")
        return EXIT_RUNTIME
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``patterd`` console script."""
    rest = list(sys.argv[1:] if argv is None else argv)
    if rest[:1] == ["simulate"]:
        from .simulate.cli import main as simulate_main
        return simulate_main(rest[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "version":
            print(f"patterd {__version__}")
            return EXIT_OK
        if args.command == "check":
            return cmd_check(args)
        return cmd_serve(args)
    except KeyboardInterrupt:
        return EXIT_OK
