"""What every carrier offers the daemon: its webhook routes and its start-up work."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from ..config import CarrierSettings
    from ..gateway import Gateway


class Carrier(Protocol):
    """A carrier: settings plus the routes that translate its protocol."""

    name: ClassVar[str]
    settings: CarrierSettings

    def routes(self, gw: Gateway) -> list[web.RouteDef]:
        """The carrier's webhook (and later media) routes."""
        ...

    async def on_startup(self, gw: Gateway) -> None:
        """Work after the server listens (e.g. pointing the number at us); never fatal."""
        ...
