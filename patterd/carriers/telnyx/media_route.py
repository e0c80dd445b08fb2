"""``GET /media/telnyx/{token}``: Telnyx's media stream, authenticated by a per-call token
(Telnyx does not sign the upgrade)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ...call.media_socket import serve_media
from ...config import TelnyxSettings
from ...ops.logging import get_logger
from ...web.request import Forbidden
from ...carriers.base import StreamStarted
from .control import OUTBOUND_REF, TelnyxControl
from .media import TelnyxMedia
from .rest import read_client_state
from .stream_token import StreamTokens
from .webhooks import MEDIA_PATH, stream_url

if TYPE_CHECKING:
    from ...gateway import Gateway

log = get_logger("patterd.telnyx")


def media_route(gw: Gateway, settings: TelnyxSettings, tokens: StreamTokens) -> web.RouteDef:
    """The route; the token names the one call it may carry."""
    public_url = gw.config.server.public_url
    control = gw.control = TelnyxControl(gw.session, settings, gw.config, tokens,
                                         lambda token: stream_url(public_url, token),
                                         on_error=gw.carrier_error("telnyx"))

    async def media(request: web.Request) -> web.StreamResponse:
        call_id = tokens.verify(request.match_info["token"])
        if call_id is None:
            gw.metrics.signature_failures.labels("telnyx").inc()
            log.warning("telnyx_media_token_rejected")
            raise Forbidden("bad or expired media stream token")
        if call_id.startswith(OUTBOUND_REF):
            # Dialled by us: the call id did not exist yet; the client_state names the dial.
            def same_dial(start: StreamStarted) -> str:
                state = read_client_state(start.parameters.get("client_state"))
                if state and state.get("ref") != call_id:
                    return "start belongs to another outbound call than the stream token"
                return ""

            return await serve_media(request, gw, carrier="telnyx", proto=TelnyxMedia(),
                                     control=control, check_start=same_dial)
        return await serve_media(request, gw, carrier="telnyx", proto=TelnyxMedia(),
                                 control=control, expected_call_id=call_id)

    return web.get(MEDIA_PATH + "/{token}", media)
