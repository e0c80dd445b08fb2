"""``GET /media/twilio``: Twilio's Media Streams WebSocket, signature-checked before upgrade;
its ``start`` served only with the call's stream token (:mod:`.stream_token`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ...call.media_socket import serve_media
from ...call.stream_gate import admit_start
from ...carriers.base import StreamStarted
from ...config import TwilioSettings
from ...ops.logging import get_logger
from ...web.request import Forbidden
from .control import TwilioControl
from .media import TwilioMedia
from .signature import SETTINGS_HEADER, SignatureVerifier
from .stream_token import TOKEN_PARAM, StreamTokens
from .webhooks import MEDIA_PATH, stream_url

if TYPE_CHECKING:
    from ...gateway import Gateway

log = get_logger("patterd.twilio")


def media_route(gw: Gateway, settings: TwilioSettings, verifier: SignatureVerifier,
                tokens: StreamTokens) -> web.RouteDef:
    """The route; Twilio signs the upgrade over the ``wss://`` URL with no parameters (the
    same value for every call: the ``start``'s stream token says which call it is)."""
    url = stream_url(gw.config.server.public_url)
    scheme = url.split(":", 1)[0]
    control = gw.control = TwilioControl(gw.session, settings, gw.config, url, tokens,
                                         on_error=gw.carrier_error("twilio"))

    async def admit(start: StreamStarted) -> str:
        # The token leaves the stream's context here: it never reaches a record or a log.
        grant = tokens.read(start.parameters.pop(TOKEN_PARAM, ""))
        return await admit_start(gw, "twilio", grant, start)

    async def media(request: web.Request) -> web.StreamResponse:
        signature = request.headers.get("X-Twilio-Signature", "")
        # Should a Webhook Rule apply a SharedKey to the stream URL, the upgrade names it too.
        problem = verifier.check(request.raw_path, (), signature, scheme=scheme,
                                 settings=request.headers.get(SETTINGS_HEADER, ""))
        if problem:
            gw.metrics.signature_failures.labels("twilio").inc()
            log.warning("twilio_media_signature_rejected", reason=problem)
            raise Forbidden("bad or missing X-Twilio-Signature on the media stream")
        return await serve_media(request, gw, carrier="twilio", proto=TwilioMedia(),
                                 control=control, admit=admit)

    return web.get(MEDIA_PATH, media)
