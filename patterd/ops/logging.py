"""structlog set-up: one JSON object per line, phone numbers masked, secrets never logged."""

from __future__ import annotations

import logging
import re
import sys
import time
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


# Numbers as people write them: +1 415 555 9880, +44 20 7946 0958, (415) 555-9878,
# 415-555-9878, 415.555.9878, 020 7946 0958. Not dates (2026-12-07), times, IPs or ids.
_WRITTEN_PHONE = re.compile(r"""
    (?<![\w.+\-])
    (?: \+\d{1,3}(?:[\ .\-]?\(?\d{1,4}\)?){1,5}[\ .\-]?\d{2,4}    # +CC and groups
      | \(\d{2,4}\)[\ .\-]?\d{3}[\ .\-]?\d{3,4}                   # (415) 555-9878
      | \d{3}[.\-]\d{3}[.\-]\d{4}                                 # 415-555-9878
      | 0\d{1,4}(?:[\ \-]\d{2,4}){2,4}                             # 020 7946 0958
    )
    (?![\w.\-]?\d)(?!\w)
""", re.VERBOSE)


def _mask_written(m: re.Match[str]) -> str:
    """All digits but the last four starred, separators kept (fewer than 7 digits: as is)."""
    text = m.group(0)
    hidden = sum(c.isdigit() for c in text) - 4
    if hidden < 3:
        return text
    out: list[str] = []
    for c in text:
        if c.isdigit():
            out.append("*" if hidden > 0 else c)
            hidden -= 1
        else:
            out.append(c)
    return "".join(out)


def mask_phone(text: str) -> str:
    """``+15550001234`` → ``+*******1234``, ``(415) 555-9878`` → ``(***) ***-9878``; SIP
    users are masked likewise (all but the last four characters)."""
    if any(c.isdigit() for c in text):
        text = _WRITTEN_PHONE.sub(_mask_written, text)
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
    server_log = logging.getLogger("aiohttp.server")
    for old in [f for f in server_log.filters if isinstance(f, QuietProtocolErrors)]:
        server_log.removeFilter(old)
    server_log.addFilter(QuietProtocolErrors())
    # One access line per webhook would double the log volume; our handlers log what matters.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class QuietProtocolErrors(logging.Filter):
    """aiohttp logs every malformed request (a bad request line, an oversized header) and
    every client that hangs up at ERROR with a traceback: anyone could write error lines. Those
    become one WARNING ``http_requests_malformed`` per ``every`` seconds, with how many there
    were and the last reason; the client got its 400 anyway."""

    def __init__(self, every: float = 10.0) -> None:
        super().__init__()
        self.every = every
        self._next = 0.0
        self._count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record (rewritten) or drop it."""
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, (HttpProcessingError, ConnectionError)):
            return True
        self._count += 1
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.every
        reason = (getattr(exc, "message", "") or str(exc) or type(exc).__name__)[:200]
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = "http_requests_malformed", ()
        record.exc_info, record.exc_text = None, None
        record.count, record.last_reason = self._count, reason
        self._count = 0
        return True


def get_logger(name: str = "patterd") -> Any:
    """A structlog logger."""
    return structlog.get_logger(name)
