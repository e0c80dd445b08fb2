"""structlog set-up: one JSON object per line, phone numbers masked, secrets never logged."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# E.164 numbers and bare 7–15 digit runs that look like phone numbers (with optional +).
_PHONE = re.compile(r"(?<![\w.])(\+?)(\d{3,11})(\d{4})(?![\w])")
_SECRET_NAMES = re.compile(r"(token|secret|password|api_key|apikey|authorization|signature)",
                           re.IGNORECASE)
_SIP = re.compile(r"(sips?:)([^@\s]+)@")
# A Telnyx media URL's per-call token grants that call's stream: never in a log line.
_MEDIA_TOKEN = re.compile(r"(/media/telnyx/)[^\s/?#\"']+")


def mask_phone(text: str) -> str:
    """``+15550001234`` → ``+*******1234``; SIP users are masked likewise."""
    text = _PHONE.sub(lambda m: m.group(1) + "*" * len(m.group(2)) + m.group(3), text)
    return _SIP.sub(lambda m: m.group(1) + _mask_user(m.group(2)) + "@", text)


def _mask_user(user: str) -> str:
    return "*" * max(0, len(user) - 4) + user[-4:]


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        if "/media/telnyx/" in value:
            value = _MEDIA_TOKEN.sub(r"\1***", value)
        return mask_phone(value)
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_NAMES.search(str(k)) else _scrub(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def scrub_processor(_logger: Any, _name: str, event: MutableMapping[str, Any]
                    ) -> MutableMapping[str, Any]:
    """Mask phone numbers everywhere and drop the value of any secret-looking key."""
    for key in list(event):
        if _SECRET_NAMES.search(key):
            event[key] = "***"
        else:
            event[key] = _scrub(event[key])
    return event


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route structlog (and stdlib logging, e.g. aiohttp's) to stderr as JSON lines."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, scrub_processor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    scrub_processor, renderer],
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # One access line per webhook would double the log volume; our handlers log what matters.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get_logger(name: str = "patterd") -> Any:
    """A structlog logger."""
    return structlog.get_logger(name)
