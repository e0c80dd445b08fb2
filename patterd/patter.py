"""``Patter``: a phone number, a carrier and an agent — the object the daemon runs."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from .carriers.base import Carrier
from .config import Config, ConfigError, TelnyxSettings, TwilioSettings, build_config, load_config


def carrier_for(settings: TwilioSettings | TelnyxSettings) -> Carrier:
    """The carrier object for validated settings."""
    if isinstance(settings, TwilioSettings):
        from .carriers.twilio import Carrier as Twilio
        return Twilio.from_settings(settings)
    from .carriers.telnyx import Carrier as Telnyx
    return Telnyx.from_settings(settings)


class Patter:
    """A voice agent on ``phone_number`` through ``carrier``.

    ``public_url`` (the base URL the carrier reaches) falls back to ``PATTERD_PUBLIC_URL``;
    ``settings`` takes any other section of the YAML file as a mapping, e.g.
    ``{"agent": {"first_message": "Hello!"}}``. Like the file, they read the process
    environment: ``${VAR}`` is expanded and empty settings fall back to the variables of
    contract §2 (``PATTERD_ADMIN_TOKEN``, ``OPENAI_API_KEY``, …).
    """

    def __init__(self, carrier: Carrier, phone_number: str = "", *, public_url: str = "",
                 config: Config | None = None, **settings: Any) -> None:
        self.carrier = carrier
        if config is None:
            raw: dict[str, Any] = {k: v for k, v in settings.items()}
            server = dict(raw.pop("server", {}) or {})
            server.setdefault("public_url", public_url or os.environ.get("PATTERD_PUBLIC_URL", ""))
            raw["server"] = server
            raw["phone_number"] = phone_number
            # The carrier is already validated: build the rest around a placeholder section
            # of the same provider, then put the real settings in.
            raw["carrier"] = _placeholder(carrier.settings)
            # No env argument: the process environment, exactly as for the CLI's YAML file.
            config = replace(build_config(raw), carrier=carrier.settings)
        elif config.carrier != carrier.settings:
            config = replace(config, carrier=carrier.settings)
        self.config = config
        self.config_path: Path | None = None   # the file SIGHUP re-reads (from_config)

    @classmethod
    def from_config(cls, path: str | Path) -> Patter:
        """The daemon described by a YAML file (see contract §2)."""
        config = load_config(path)
        self = cls(carrier_for(config.carrier), config.phone_number, config=config)
        self.config_path = Path(path)
        return self

    def build_app(self) -> web.Application:
        """The aiohttp application (for embedding and tests)."""
        from .app import build_app
        return build_app(self.config, self.carrier)

    async def serve(self, *, setup_logging: bool | None = None) -> None:
        """Run the daemon until SIGTERM/SIGINT (then drain). This is ``patterd --config``.

        Logging is set up as the daemon's (``logging:`` of the config: one JSON object per line
        on stderr, phone numbers masked, secrets dropped) unless this process has configured
        structlog already: an application with its own structlog set-up keeps it (add
        :func:`patterd.ops.logging.scrub_processor` to it to keep the masking).
        ``setup_logging=True`` always sets patterd's up, ``False`` never touches logging.

        SIGHUP reloads the file of :meth:`from_config`; a ``Patter`` built from arguments has
        no file, so SIGHUP is logged and ignored (the process and its calls go on).
        """
        import structlog

        from .ops.logging import configure_logging
        from .server import serve
        if setup_logging or (setup_logging is None and not structlog.is_configured()):
            configure_logging(self.config.logging.level, self.config.logging.format)
        await serve(self.config, self.carrier, config_path=self.config_path)


def _placeholder(settings: TwilioSettings | TelnyxSettings) -> dict[str, Any]:
    if isinstance(settings, TwilioSettings):
        return {"provider": "twilio", "account_sid": "AC" + "0" * 32, "auth_token": "x",
                "configure_number": settings.configure_number}
    return {"provider": "telnyx", "api_key": "x", "require_signature": False}


__all__ = ["Patter", "ConfigError", "carrier_for"]
