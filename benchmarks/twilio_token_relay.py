#!/usr/bin/env python3
"""A Media Streams relay that gives a load client's calls what Twilio gives real ones: the voice
webhook first, then the stream with the call's stream token.

patterd serves a Media Streams ``start`` only with the single-use stream token its voice
webhook put in the TwiML's ``<Parameter>``s (so nobody can open a stream for a call they did not
place). A neutral load client that only opens WebSockets — such as the shared Twilio Media
Streams client the peers are measured with — has no webhook and no token. Point it at this
relay instead: for each stream it reads the client's ``connected`` and ``start``, posts the
signed ``ringing`` voice webhook Twilio would have sent for that ``callSid`` (From/To from the
client's parameters), puts the ``<Parameter>``s of the answer's ``<Stream>`` in the ``start``,
opens the daemon's ``/media/twilio`` signed as Twilio signs it, and from then on passes every
frame through unchanged, both ways.

    taskset -c 1 .venv/bin/python -m patterd --config bench.yaml &              # port 8768
    taskset -c 0 .venv/bin/python benchmarks/twilio_token_relay.py --port 8769 \\
        --target http://127.0.0.1:8768 --auth-token bench-twilio-auth-token &
    taskset -c 0 python twilio_load.py --url ws://127.0.0.1:8769/media/twilio --calls 200 …

The relay runs on the load's core and adds one local hop each way: ``--plain`` passes streams
through without webhook or token, to measure that hop against a peer (the reference relay). ``--public-url`` is the daemon's
``server.public_url`` (default: ``--target``), the URL its signatures are checked against.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from patterd.carriers.twilio.signature import compute_signature  # noqa: E402

VOICE_PATH = "/webhooks/twilio/voice"
MEDIA_PATH = "/media/twilio"
MAX_MESSAGE = 1 << 20


class TokenRelay:
    """The relay's state: the daemon's address, what it checks signatures against, a session."""

    def __init__(self, target: str, public_url: str, auth_token: str, *,
                 plain: bool = False, path: str = MEDIA_PATH) -> None:
        self.plain = plain          # no webhook, no token: the hop alone (to measure it)
        self.path = path            # the target's media path
        self.target = target.rstrip("/")
        self.public_url = (public_url or target).rstrip("/")
        self.auth_token = auth_token.encode()
        self.session: aiohttp.ClientSession | None = None
        self.streams = 0
        self.refused = 0

    def app(self) -> web.Application:
        """The relay's aiohttp application (``GET /media/twilio``)."""
        app = web.Application()
        app.router.add_get(MEDIA_PATH, self.media)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True))

    async def _close(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def stream_parameters(self, start: dict[str, Any]) -> dict[str, str]:
        """Post the voice webhook for ``start``'s call; the answer's ``<Parameter>``s."""
        assert self.session is not None
        body = start.get("start") or {}
        given = body.get("customParameters") or {}
        caller = given.get("from") or given.get("caller") or "+15550100000"
        callee = given.get("to") or given.get("callee") or "+15550199000"
        form = [("AccountSid", str(body.get("accountSid", ""))), ("ApiVersion", "2010-04-01"),
                ("CallSid", str(body.get("callSid", ""))), ("CallStatus", "ringing"),
                ("Called", callee), ("Caller", caller), ("Direction", "inbound"),
                ("From", caller), ("To", callee)]
        sig = compute_signature(self.auth_token, self.public_url + VOICE_PATH, form).decode()
        async with self.session.post(
                self.target + VOICE_PATH, data=urlencode(form),
                headers={"X-Twilio-Signature": sig,
                         "Content-Type": "application/x-www-form-urlencoded"}) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise ValueError(f"voice webhook answered {resp.status}: {text[:200]}")
        stream = ET.fromstring(text).find("./Connect/Stream")
        if stream is None:
            raise ValueError(f"the TwiML has no <Connect><Stream>: {text[:200]}")
        return {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}

    async def media(self, request: web.Request) -> web.StreamResponse:
        """One client stream: webhook, token, then frames through both ways."""
        assert self.session is not None
        client = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, autoping=True)
        await client.prepare(request)
        early: list[str] = []
        start: dict[str, Any] | None = None
        async for msg in client:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if frame.get("event") == "start":
                start = frame
                break
            early.append(msg.data)
        if start is None:
            return client
        # --plain: the client's own signature header, its start as it came.
        headers = {k: v for k, v in request.headers.items() if k == "X-Twilio-Signature"}
        if not self.plain:
            try:
                start.setdefault("start", {})["customParameters"] = \
                    await self.stream_parameters(start)
            except (aiohttp.ClientError, OSError, ValueError, ET.ParseError) as exc:
                self.refused += 1
                print(f"relay: {exc}", file=sys.stderr)
                await client.close(code=1011, message=b"voice webhook failed")
                return client
            ws_url = self.public_url.replace("http", "ws", 1) + MEDIA_PATH
            headers = {"X-Twilio-Signature":
                       compute_signature(self.auth_token, ws_url, []).decode()}
        async with self.session.ws_connect(
                self.target + self.path, headers=headers,
                max_msg_size=MAX_MESSAGE, autoping=True) as daemon:
            self.streams += 1
            for text in early:
                await daemon.send_str(text)
            await daemon.send_str(json.dumps(start))
            await asyncio.gather(_pump(client, daemon), _pump(daemon, client))
        return client


async def _pump(src: Any, dst: Any) -> None:
    """Frames from ``src`` to ``dst`` until ``src`` ends; then ``dst`` is closed."""
    try:
        async for msg in src:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            else:
                break
    except (aiohttp.ClientError, ConnectionError, RuntimeError):
        pass
    finally:
        if not dst.closed:
            await dst.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8769)
    p.add_argument("--target", required=True, help="the daemon's base URL (http://host:port)")
    p.add_argument("--public-url", default="", help="its server.public_url (default: --target)")
    p.add_argument("--auth-token", default="", help="its carrier.auth_token")
    p.add_argument("--path", default=MEDIA_PATH, help="the target's media path")
    p.add_argument("--plain", action="store_true",
                   help="no webhook, no token: frames through as they come (the hop's cost)")
    args = p.parse_args()
    if not args.plain and not args.auth_token:
        p.error("--auth-token is required (or --plain)")
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    relay = TokenRelay(args.target, args.public_url, args.auth_token, plain=args.plain,
                       path=args.path)
    web.run_app(relay.app(), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
