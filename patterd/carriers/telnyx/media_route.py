"""``GET /media/telnyx/{token}``: Telnyx's media stream, authenticated by a per-call token
(Telnyx does not sign the upgrade)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ...call.media_socket import serve_media
from ...config import TelnyxSettings
from ...ops.logging import get_logger
from ...web.request import Forbidden
from .control import TelnyxControl
from .media import TelnyxMedia
from .stream_token import StreamTokens
from .webhooks import MEDIA_PATH

if TYPE_CHECKING:
    from ...gateway import Gateway

log = get_logger("patterd.telnyx")


def media_route(gw: Gateway, settings: TelnyxSettings, tokens: StreamTokens) -> web.RouteDef:
    """The route; the token names the one call it may carry."""
    control = TelnyxControl(gw.session, settings, gw.config)

    async def media(request: web.Request) -> web.StreamResponse:
        call_id = tokens.verify(request.match_info["token"])
        if call_id is None:
            gw.metrics.signature_failures.labels("telnyx").inc()
            log.warning("telnyx_media_token_rejected")
            raise Forbidden("bad or expired media stream token")
        return await serve_media(request, gw, carrier="telnyx", proto=TelnyxMedia(),
                                 control=control, expected_call_id=call_id)

    return web.get(MEDIA_PATH + "/{token}", media)
