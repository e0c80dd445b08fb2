"""``GET /media/telnyx/{token}``: Telnyx's media stream, authenticated by a per-call token
(Telnyx does not sign the upgrade)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ...call.media_socket import serve_media
from ...call.stream_gate import admit_start
from ...carriers.base import StreamStarted
from ...config import TelnyxSettings
from ...ops.logging import get_logger
from ...web.request import Forbidden
from .control import TelnyxControl
from .media import TelnyxMedia
from .rest import read_client_state
from ..stream_token import HANDOFF_PARAM
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
        grant = tokens.read(request.match_info["token"])
        if grant is None:
            gw.metrics.signature_failures.labels("telnyx").inc()
            log.warning("telnyx_media_token_rejected")
            raise Forbidden("bad or expired media stream token")

        async def admit(start: StreamStarted) -> str:
            # A dialled call's client_state (ours, echoed by Telnyx) must name the same dial.
            state = read_client_state(start.parameters.get("client_state"))
            if grant.dial_ref and state.get("ref") not in (None, grant.dial_ref):
                gw.metrics.media_refused.labels("telnyx", "token").inc()
                log.warning("media_start_refused", carrier="telnyx",
                            reason="client_state names another dial than the stream token")
                return "the stream token was issued for another call"
            handoff = request.query.get(HANDOFF_PARAM, "")
            if handoff:   # a stream moved here from another replica (see call.handoff)
                start.parameters.update({HANDOFF_PARAM: handoff[:64], "resumed": "1"})
            return await admit_start(gw, "telnyx", grant, start)

        return await serve_media(request, gw, carrier="telnyx", proto=TelnyxMedia(),
                                 control=control, admit=admit)

    return web.get(MEDIA_PATH + "/{token}", media)
