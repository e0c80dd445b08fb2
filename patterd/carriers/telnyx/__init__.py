"""Telnyx Call Control: Ed25519-signed JSON webhooks, REST commands, media streaming."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from aiohttp import web

from ...config import TelnyxSettings
from ...config.load import telnyx_settings
from ...ops.logging import get_logger

if TYPE_CHECKING:
    from ...gateway import Gateway

log = get_logger("patterd.telnyx")


class Carrier:
    """The Telnyx carrier (``patterd.Telnyx``). Arguments default to ``""`` and fall back to
    ``TELNYX_API_KEY``, ``TELNYX_CONNECTION_ID`` and ``TELNYX_PUBLIC_KEY``; a missing API key
    (or public key, while ``require_signature``) raises :class:`patterd.config.ConfigError`
    naming the variable. A public key that does not decode is reported when the daemon starts
    (``Patter.serve()``; ``patterd check`` for a file).

    What it was given (or read) is readable under the same names: ``api_key``,
    ``connection_id``, ``public_key``, ``api_base_url``, ``require_signature``. Equal settings
    make equal carriers; the repr never shows the API key."""

    name: ClassVar[str] = "telnyx"

    def __init__(self, api_key: str = "", connection_id: str = "", public_key: str = "", *,
                 api_base_url: str = "https://api.telnyx.com/v2",
                 require_signature: bool = True) -> None:
        self.settings: TelnyxSettings = telnyx_settings(
            api_key=api_key, connection_id=connection_id, public_key=public_key,
            api_base_url=api_base_url, require_signature=require_signature, check_format=False)

    @property
    def api_key(self) -> str:
        """The API v2 key, as given or read from ``TELNYX_API_KEY``."""
        return self.settings.api_key

    @property
    def connection_id(self) -> str:
        """The Call Control application id, as given or read from ``TELNYX_CONNECTION_ID``."""
        return self.settings.connection_id

    @property
    def public_key(self) -> str:
        """The webhook-signing public key, as given or read from ``TELNYX_PUBLIC_KEY``."""
        return self.settings.public_key

    @property
    def api_base_url(self) -> str:
        """Telnyx's REST API (or a local stand-in, such as the simulator's)."""
        return self.settings.api_base_url

    @property
    def require_signature(self) -> bool:
        """Whether webhooks must be signed (a set public key is always checked)."""
        return self.settings.require_signature

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.settings == self.settings  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.settings)

    @classmethod
    def from_settings(cls, settings: TelnyxSettings) -> Carrier:
        """A carrier for already-validated settings."""
        self = cls.__new__(cls)
        self.settings = settings
        return self

    def routes(self, gw: Gateway) -> list[web.RouteDef]:
        """The Telnyx call-event webhook."""
        from .rest import TelnyxRest
        from .signature import SignatureVerifier
        from .stream_token import StreamTokens
        from .webhooks import make_routes

        verifier = None
        if self.settings.require_signature or self.settings.public_key:
            verifier = SignatureVerifier(self.settings.public_key)
        else:
            log.warning("telnyx_signature_check_disabled",
                        detail="carrier.require_signature is false: ANYONE can post call "
                               "events to this daemon. Use only for local experiments.")
        from .media_route import media_route

        tokens = StreamTokens(self.settings.api_key)
        rest = TelnyxRest(gw.session, self.settings, gw.carrier_error("telnyx"))
        return [*make_routes(gw, verifier, rest, tokens),
                media_route(gw, self.settings, tokens)]

    async def on_startup(self, gw: Gateway) -> None:
        """Nothing to configure: the Call Control App's webhook URL is set in the portal."""
        log.info("telnyx_ready", webhook=f"{gw.config.server.public_url}/webhooks/telnyx/voice")

    def __repr__(self) -> str:
        return (f"Telnyx(api_key='********', connection_id={self.settings.connection_id!r}, "
                f"public_key={self.settings.public_key[:8] + '…' if self.settings.public_key else ''!r})")
