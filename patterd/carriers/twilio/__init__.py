"""Twilio Programmable Voice: signed form webhooks, TwiML, Media Streams, REST."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from aiohttp import web

from ...config import TwilioSettings
from ...config.load import twilio_settings
from ...ops.logging import get_logger
from ..rest import RestError

if TYPE_CHECKING:
    from ...gateway import Gateway

log = get_logger("patterd.twilio")


class Carrier:
    """The Twilio carrier (``patterd.Twilio``). Arguments default to ``""`` and fall back to
    ``TWILIO_ACCOUNT_SID`` and ``TWILIO_AUTH_TOKEN``; a missing one raises
    :class:`patterd.config.ConfigError` naming the variable. A malformed account SID or API
    URL is reported when the daemon starts (``Patter.serve()``; ``patterd check`` for a file).

    What it was given (or read) is readable under the same names: ``account_sid``,
    ``auth_token``, ``configure_number``, ``api_base_url``, ``signing_keys`` (SharedKey id →
    secret, falling back to ``TWILIO_SIGNING_KEYS``). Equal settings make equal carriers; the
    repr never shows the auth token or a signing secret."""

    name: ClassVar[str] = "twilio"

    def __init__(self, account_sid: str = "", auth_token: str = "", *,
                 configure_number: bool = True,
                 api_base_url: str = "https://api.twilio.com",
                 signing_keys: Mapping[str, str] | None = None) -> None:
        self.settings: TwilioSettings = twilio_settings(
            account_sid=account_sid, auth_token=auth_token, configure_number=configure_number,
            api_base_url=api_base_url, signing_keys=signing_keys,
            check_format=False)

    @property
    def account_sid(self) -> str:
        """The account SID (``AC…``), as given or read from ``TWILIO_ACCOUNT_SID``."""
        return self.settings.account_sid

    @property
    def auth_token(self) -> str:
        """The auth token, as given or read from ``TWILIO_AUTH_TOKEN``."""
        return self.settings.auth_token

    @property
    def configure_number(self) -> bool:
        """Whether the daemon points the number's voice URL at itself on start."""
        return self.settings.configure_number

    @property
    def api_base_url(self) -> str:
        """Twilio's REST API (or a local stand-in, such as the simulator's)."""
        return self.settings.api_base_url

    @property
    def signing_keys(self) -> Mapping[str, str]:
        """SharedKey signing keys (id → secret), as given or read from ``TWILIO_SIGNING_KEYS``."""
        return self.settings.signing_keys

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.settings == self.settings  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        st = self.settings      # (its signing keys are a read-only mapping: not hashable)
        return hash((st.account_sid, st.auth_token, st.configure_number, st.api_base_url,
                     tuple(sorted(st.signing_keys.items()))))

    @classmethod
    def from_settings(cls, settings: TwilioSettings) -> Carrier:
        """A carrier for already-validated settings."""
        self = cls.__new__(cls)
        self.settings = settings
        return self

    def routes(self, gw: Gateway) -> list[web.RouteDef]:
        """The four Twilio webhooks."""
        from .media_route import media_route
        from .signature import SignatureVerifier
        from .stream_token import StreamTokens
        from .webhooks import make_routes

        verifier = SignatureVerifier(self.settings.auth_token, gw.config.server.public_url,
                                     self.settings.signing_keys)
        tokens = StreamTokens(self.settings.auth_token)
        return [*make_routes(gw, verifier, tokens),
                media_route(gw, self.settings, verifier, tokens)]

    async def on_startup(self, gw: Gateway) -> None:
        """Start the price sweep; point ``phone_number`` at this daemon when
        ``configure_number`` is set."""
        from .price import sweep_loop
        gw.supervise("twilio_price_sweep", lambda: sweep_loop(gw, self.settings))
        if not self.settings.configure_number or not gw.config.phone_number:
            return
        from .rest import TwilioRest

        base = gw.config.server.public_url
        rest = TwilioRest(gw.session, self.settings, gw.carrier_error("twilio"))
        try:
            sid = await rest.configure_number(
                gw.config.phone_number, f"{base}/webhooks/twilio/voice",
                f"{base}/webhooks/twilio/status")
        except RestError as exc:
            log.warning("configure_number_failed", phone_number=gw.config.phone_number,
                        status=exc.status, code=exc.code, reason=exc.message,
                        hint="calls reach us only if the number's voice URL points here")
            return
        log.info("number_configured", phone_number=gw.config.phone_number, number_sid=sid)

    def __repr__(self) -> str:
        return (f"Twilio(account_sid={self.settings.account_sid[:6] + '…'!r}, "
                f"auth_token='********')")

