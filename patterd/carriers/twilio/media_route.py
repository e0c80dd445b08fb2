"""``GET /media/twilio``: Twilio's Media Streams WebSocket, signature-checked before upgrade."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ...call.media_socket import serve_media
from ...config import TwilioSettings
from ...ops.logging import get_logger
from ...web.request import Forbidden
from .control import TwilioControl
from .media import TwilioMedia
from .signature import SignatureVerifier
from .webhooks import MEDIA_PATH, stream_url

if TYPE_CHECKING:
    from ...gateway import Gateway

log = get_logger("patterd.twilio")


def media_route(gw: Gateway, settings: TwilioSettings, verifier: SignatureVerifier
                ) -> web.RouteDef:
    """The route; Twilio signs the upgrade over the ``wss://`` URL with no parameters."""
    url = stream_url(gw.config.server.public_url)
    scheme = url.split(":", 1)[0]
    control = gw.control = TwilioControl(gw.session, settings, gw.config, url,
                                         on_error=gw.carrier_error("twilio"))

    async def media(request: web.Request) -> web.StreamResponse:
        signature = request.headers.get("X-Twilio-Signature", "")
        if not verifier.verify(request.raw_path, (), signature, scheme=scheme):
            gw.metrics.signature_failures.labels("twilio").inc()
            log.warning("twilio_media_signature_rejected",
                        reason="missing" if not signature else "does not match")
            raise Forbidden("bad or missing X-Twilio-Signature on the media stream")
        return await serve_media(request, gw, carrier="twilio", proto=TwilioMedia(),
                                 control=control)

    return web.get(MEDIA_PATH, media)
